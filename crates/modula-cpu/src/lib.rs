#![doc = include_str!("../README.md")]

mod cpu;
pub mod fastexp;
pub mod gemm;
pub mod sparse;

pub use cpu::Cpu;
