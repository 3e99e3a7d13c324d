#![doc = include_str!("../README.md")]

mod cpu;
pub mod fastexp;
pub mod gemm;
pub mod sparse;
pub mod team;

pub use cpu::Cpu;
pub use team::Team;
