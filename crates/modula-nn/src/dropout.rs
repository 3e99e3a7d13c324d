//! Inverted dropout.

use modula_tensor::{Backend, BinaryOp};
use rand::Rng;

use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamStore};

/// Inverted dropout: in training, each element is zeroed with probability `p` and the
/// survivors are scaled by `1 / (1 - p)`, so that evaluation needs no rescaling and is the
/// identity.
///
/// The keep-mask is drawn on the host from [`Ctx::rng`] (one uniform draw per element, row-major)
/// and uploaded, so a given seed gives the same mask on every backend.
///
/// ```
/// use modula_nn::{Ctx, Dropout, Module, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// let cpu = Cpu::with_threads(1);
/// let params = ParamStore::new();
/// let x = cpu.upload([1, 4], &[1.0; 4]);
/// let (y, _) = Dropout::new(0.5).forward(&cpu, &params, &x, &mut Ctx::train(3));
/// // Every element is either dropped or doubled.
/// assert!(cpu.download(&y)?.iter().all(|&v| v == 0.0 || v == 2.0));
/// let (y, _) = Dropout::new(0.5).forward(&cpu, &params, &x, &mut Ctx::eval());
/// assert_eq!(cpu.download(&y)?, vec![1.0; 4]);
/// # Ok::<(), modula_tensor::BackendError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// Dropout with drop probability `p`.
    ///
    /// # Panics
    /// If `p` is not in `[0, 1)` (with `p = 1` nothing would survive and the scale is infinite).
    #[track_caller]
    pub fn new(p: f32) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "Dropout: drop probability must be in [0, 1), got {p}"
        );
        Dropout { p }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl<B: Backend> Module<B> for Dropout {
    /// The scaled keep-mask (entries `0` or `1 / (1 - p)`), or `None` when the forward pass was
    /// the identity (evaluation, or `p = 0`).
    type Cache = Option<B::Tensor>;

    /// In training with `p > 0`, draws one value per element from `ctx.rng`; otherwise draws
    /// nothing and returns a copy of `x`.
    fn forward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        x: &B::Tensor,
        ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache) {
        if !ctx.train || self.p == 0.0 {
            return (b.duplicate(x), None);
        }
        let shape = b.shape(x);
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..shape[0] * shape[1])
            .map(|_| {
                if ctx.rng.random::<f32>() < self.p {
                    0.0
                } else {
                    scale
                }
            })
            .collect();
        let mask = b.upload(shape, &mask);
        (b.binary(BinaryOp::Mul, x, &mask), Some(mask))
    }

    fn backward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        mask: Self::Cache,
        dy: &B::Tensor,
        _g: &mut Grads<B>,
    ) -> B::Tensor {
        match mask {
            Some(mask) => b.binary(BinaryOp::Mul, dy, &mask),
            None => b.duplicate(dy),
        }
    }
}
