//! Tensor primitives for modula.
//!
//! - [`Backend`]: the trait every compute backend implements. A backend value carries its
//!   context (threads, device); operations are keyed by small enums ([`UnaryOp`],
//!   [`BinaryOp`], [`ReduceOp`], [`Transpose`]).
//! - [`Cpu`]: the fast CPU backend (ndarray storage, the packed AVX-512 [`gemm`], rayon).
//! - [`gemm`]: the packed GEMM itself, with strided views and a reusable packed right-hand side.
//! - [`Reference`]: slow, obviously-correct loops, the oracle for tests.
//! - [`conformance`]: one suite, generic over the backend, that every backend must pass.
//!
//! Error policy: misuse of the API (mismatched shapes, out-of-range indices) is a contract
//! violation and panics with the caller's location; device failures are [`BackendError`]s,
//! reported by [`Backend::download`] and [`Backend::synchronize`].
//!
//! ```
//! use modula_tensor::{Backend, Cpu, UnaryOp};
//! let cpu = Cpu::new();
//! let x = cpu.upload([1, 3], &[-1.0, 0.0, 2.0]);
//! let y = cpu.unary(UnaryOp::Relu, &x);
//! assert_eq!(cpu.download(&y)?, vec![0.0, 0.0, 2.0]);
//! # Ok::<(), modula_tensor::BackendError>(())
//! ```

mod backend;
pub mod check;
pub mod conformance;
mod cpu;
mod error;
pub mod fastexp;
pub mod gemm;
mod ops;
mod reference;

pub use backend::{Backend, Shape};
pub use cpu::Cpu;
pub use error::BackendError;
pub use ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Transpose, UnaryOp, Window2d, sigmoid,
    softplus,
};
pub use reference::Reference;
