#![doc = include_str!("../README.md")]

mod block;
mod csr;
mod error;
mod front;
mod kernels;
mod select;

pub use block::BlockSparse;
pub use csr::Csr;
pub use error::SparseError;
pub use front::SparseBackend;
pub use kernels::SparseKernels;
pub use select::Select;
