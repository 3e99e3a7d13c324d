//! The [`Module`] trait: explicit forward and backward with a typed cache.

use modula_tensor::Backend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::param::{Grads, ParamStore};

/// Per-call context of a forward pass: whether the network is training (dropout on) and the
/// random stream that stochastic layers draw from, so every random choice flows from a seed.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Training mode (dropout active) when true; evaluation otherwise.
    pub train: bool,
    /// Random stream for stochastic layers.
    pub rng: ChaCha8Rng,
}

impl Ctx {
    /// A training context seeded with `seed`.
    pub fn train(seed: u64) -> Self {
        Ctx {
            train: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An evaluation context (deterministic layers only draw nothing from it).
    pub fn eval() -> Self {
        Ctx {
            train: false,
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }
}

/// A differentiable map from one tensor to another, with explicit forward and backward.
///
/// `forward` returns the output and a cache holding whatever backward needs; `backward`
/// consumes that cache, adds parameter gradients into `grads` and returns the gradient with
/// respect to the input. Parameters live in a [`ParamStore`] and are looked up by id, so a
/// module is plain configuration plus [`crate::ParamId`]s.
pub trait Module<B: Backend> {
    /// What forward keeps for backward.
    type Cache;

    /// Computes the output for input `x`.
    fn forward(
        &self,
        backend: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache);

    /// Given `dy = dL/dy`, accumulates parameter gradients and returns `dL/dx`.
    fn backward(
        &self,
        backend: &B,
        params: &ParamStore<B>,
        cache: Self::Cache,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor;
}
