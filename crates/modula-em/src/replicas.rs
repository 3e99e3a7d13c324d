//! Data-parallel training as the trainer sees it: the other ranks of the run, behind a small
//! object-safe trait that `modula-dist` implements over its communicators (this crate names no
//! transport). The global statistics of a step summed over the ranks are in `global`.
//!
//! Each rank trains on the examples of every global batch that it owns (the block of example
//! keys [`Replicas::owned`] gives it), E-steps them against its own block of EM's table, and
//! the gradients of the per-rank means are summed, each weighted by the rank's share of the
//! batch, into the gradient of the global mean. Every rank then takes the same optimiser step,
//! so the parameters stay replicated.

use std::ops::Range;

use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;

use crate::error::TrainError;

/// The ranks of a data-parallel run, as the [`crate::Trainer`] needs them. Every method is a
/// collective (except `rank`, `ranks` and `owned`): all ranks call it, in the same order.
pub trait Replicas<B: Backend>: std::fmt::Debug {
    /// This process's rank, `0..ranks()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn ranks(&self) -> usize;

    /// The block of the keys `0..examples` this rank owns (contiguous blocks in rank order,
    /// the same on every rank for the same `examples`).
    fn owned(&self, examples: usize) -> Range<usize>;

    /// Replaces every parameter's gradient by the sum over ranks of `scale` times it.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when the transport or the device fails.
    fn sum_grads(
        &self,
        b: &B,
        params: &ParamStore<B>,
        grads: &mut Grads<B>,
        scale: f32,
    ) -> Result<(), TrainError>;

    /// Replaces `values` by their element-wise sum over ranks, bit-identical on every rank
    /// (all ranks pass the same length).
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when the transport fails.
    fn sum(&self, values: &mut [f64]) -> Result<(), TrainError>;

    /// Every rank's `local` concatenated in rank order on rank 0; an empty vector elsewhere.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when the transport fails.
    fn gather(&self, local: &[u16]) -> Result<Vec<u16>, TrainError>;
}
