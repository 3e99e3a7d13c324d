#![doc = include_str!("../README.md")]

mod cpu;
pub mod fastexp;
pub mod gemm;

pub use cpu::Cpu;
