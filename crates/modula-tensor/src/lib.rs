#![doc = include_str!("../README.md")]

mod backend;
pub mod check;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod kernels;
mod matrix;
mod ops;
mod reference;

pub use backend::Backend;
pub use error::BackendError;
pub use kernels::{GroupedKernels, Kernels};
pub use matrix::Matrix;
pub use ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d, sigmoid,
    softplus,
};
pub use reference::Reference;
