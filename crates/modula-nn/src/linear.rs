//! Fully connected layer `y = x W + b`.

use modula_tensor::{Backend, Transpose};
use rand::Rng;

use crate::init::Init;
use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamId, ParamStore};

/// Fully connected layer: `y = x W + b` with `W: [d_in, d_out]`, `b: [1, d_out]`.
///
/// ```
/// use modula_nn::{Ctx, Init, Linear, Module, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// use rand::SeedableRng;
/// let cpu = Cpu::with_threads(1);
/// let mut params = ParamStore::new();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let layer = Linear::new(&cpu, &mut params, "fc", 3, 2, Init::Glorot, &mut rng);
/// let x = cpu.upload([4, 3], &[0.5; 12]);
/// let (y, _cache) = layer.forward(&cpu, &params, &x, &mut Ctx::eval());
/// assert_eq!(cpu.shape(&y), [4, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight `[d_in, d_out]`.
    pub weight: ParamId,
    /// Bias `[1, d_out]`.
    pub bias: ParamId,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

impl Linear {
    /// Registers `{name}.weight` (initialised by `init`) and `{name}.bias` (zeros).
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        d_out: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        let w = init.sample(rng, d_in, d_out, d_in * d_out);
        let weight = params.add(format!("{name}.weight"), backend.upload([d_in, d_out], &w));
        let bias = params.add(format!("{name}.bias"), backend.zeros([1, d_out]));
        Linear {
            weight,
            bias,
            d_in,
            d_out,
        }
    }
}

impl<B: Backend> Module<B> for Linear {
    /// The input, needed for the weight gradient.
    type Cache = B::Tensor;

    #[track_caller]
    fn forward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        x: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, B::Tensor) {
        let n = b.shape(x)[0];
        let mut y = b.zeros([n, self.d_out]);
        b.matmul(
            1.0,
            x,
            Transpose::No,
            p.get(self.weight),
            Transpose::No,
            0.0,
            &mut y,
        );
        b.add_row(&mut y, p.get(self.bias));
        (y, b.duplicate(x))
    }

    fn backward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        x: B::Tensor,
        dy: &B::Tensor,
        g: &mut Grads<B>,
    ) -> B::Tensor {
        let (dw, beta) = g.product_entry(b, self.weight, [self.d_in, self.d_out]);
        b.matmul(1.0, &x, Transpose::Yes, dy, Transpose::No, beta, dw);
        g.accumulate(
            b,
            self.bias,
            &b.reduce_cols(modula_tensor::ReduceOp::Sum, dy),
        );
        // The cached input is spent once the weight gradient is done and has the shape of its
        // gradient: overwriting it (beta = 0) saves zeroing a new buffer.
        let mut dx = x;
        b.matmul(
            1.0,
            dy,
            Transpose::No,
            p.get(self.weight),
            Transpose::Yes,
            0.0,
            &mut dx,
        );
        dx
    }
}
