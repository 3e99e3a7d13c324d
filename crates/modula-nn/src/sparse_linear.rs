//! [`SparseLinear`]: a ReLU followed by a fully connected layer, whose products skip the
//! ReLU's zeros when the batch is sparse enough to gain from it.

use modula_sparse::{Csr, Select, SparseBackend};
use modula_tensor::{ReduceOp, Transpose, UnaryOp};
use rand::Rng;

use crate::init::Init;
use crate::linear::Linear;
use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamId, ParamStore};

/// Densities below which the sparse products beat dense GEMM, by batch rows, measured with
/// `cargo xtask bench sparse` on the project's 2-vCPU AVX-512 machine, an Emerald Rapids Xeon
/// (random patterns, `k = m = 1024`, two threads, the sparse form's build included;
/// docs/sparse.md, raw entries in docs/sparse-xeon/depth-*.jsonl): the median over three runs
/// of the crossover, which fell at 66.0-67.8% zeros for 32 rows, 55.0-56.4% for 256 and
/// 55.8-56.2% for 1024; a single row was faster sparse even fully dense (the dense product of
/// one row is a GEMV bound by reading `W`). Between the listed row counts the crossover is
/// interpolated in `log2(rows)`; outside, the nearest one holds.
pub const CROSSOVER: [(usize, f64); 4] = [(1, 1.0), (32, 0.34), (256, 0.44), (1024, 0.44)];

/// How a [`SparseLinear`] chooses between its sparse and dense products.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Dispatch {
    /// Sparse when the batch's density is below the crossover of [`CROSSOVER`] for its rows.
    #[default]
    Auto,
    /// Sparse when the batch's density is below this fraction, whatever its rows (a
    /// configuration's override of the measured crossover).
    Below(f64),
    /// Always the sparse products.
    Sparse,
    /// Always the dense products.
    Dense,
}

impl Dispatch {
    /// Whether a batch of `rows` rows with this `density` (stored entries per element) takes
    /// the sparse products.
    pub fn sparse(self, rows: usize, density: f64) -> bool {
        match self {
            Dispatch::Auto => density < crossover(rows),
            Dispatch::Below(limit) => density < limit,
            Dispatch::Sparse => true,
            Dispatch::Dense => false,
        }
    }
}

/// The density below which sparse products win for a batch of `rows` rows ([`CROSSOVER`],
/// interpolated in `log2(rows)`).
pub fn crossover(rows: usize) -> f64 {
    let x = (rows.max(1) as f64).log2();
    let points = CROSSOVER.map(|(n, d)| ((n as f64).log2(), d));
    if x <= points[0].0 {
        return points[0].1;
    }
    for pair in points.windows(2) {
        let ((x0, d0), (x1, d1)) = (pair[0], pair[1]);
        if x <= x1 {
            return d0 + (d1 - d0) * (x - x0) / (x1 - x0);
        }
    }
    points[points.len() - 1].1
}

/// `y = relu(z) W + b` with `W: [d_in, d_out]`, `b: [1, d_out]`: the ReLU of the previous
/// layer's pre-activation `z` and a fully connected layer, in one module, so that the
/// products can skip the ReLU's zeros.
///
/// Each forward counts the positive entries of `z` (the density of the ReLU output) and, by
/// its [`Dispatch`], either builds the CSR form of `relu(z)` straight from `z` and runs the
/// sparse products, or runs the dense ones. Both are exact: the forward is `relu(z) W + b`
/// either way, and the backward returns `dL/dz`, which is `dY W^T` at the positive entries
/// of `z` and zero elsewhere; the sparse path computes only those entries
/// (`SparseBackend::sampled_matmul_t`) and the weight gradient `relu(z)^T dY` from the
/// transposed CSR form.
///
/// ```
/// use modula_cpu::Cpu;
/// use modula_nn::{Ctx, Init, Module, ParamStore, SparseLinear};
/// use modula_tensor::Backend;
/// use rand::SeedableRng;
/// let cpu = Cpu::with_threads(1);
/// let mut params = ParamStore::new();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let layer = SparseLinear::new(&cpu, &mut params, "fc", 4, 2, Init::Glorot, &mut rng);
/// let z = cpu.upload([2, 4], &[-1.0, 0.5, -2.0, -0.5, -1.0, -1.0, -1.0, 3.0]);
/// let (y, cache) = layer.forward(&cpu, &params, &z, &mut Ctx::eval());
/// assert!(cache.is_sparse()); // 25% of relu(z) is non-zero
/// assert_eq!(cpu.shape(&y), [2, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct SparseLinear {
    /// Weight `[d_in, d_out]`.
    pub weight: ParamId,
    /// Bias `[1, d_out]`.
    pub bias: ParamId,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// How each batch chooses its products.
    pub dispatch: Dispatch,
}

impl SparseLinear {
    /// Registers `{name}.weight` (initialised by `init`) and `{name}.bias` (zeros), with
    /// [`Dispatch::Auto`]; the parameters are named and shaped as [`crate::Linear`]'s.
    pub fn new<B: SparseBackend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        d_out: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        let linear = Linear::new(backend, params, name, d_in, d_out, init, rng);
        SparseLinear {
            weight: linear.weight,
            bias: linear.bias,
            d_in,
            d_out,
            dispatch: Dispatch::Auto,
        }
    }

    /// The same layer with another [`Dispatch`].
    pub fn with_dispatch(self, dispatch: Dispatch) -> Self {
        SparseLinear { dispatch, ..self }
    }
}

/// What [`SparseLinear`]'s forward keeps for its backward: the sparse form of `relu(z)`, or
/// `z` and `relu(z)` when it took the dense products.
#[derive(Debug)]
pub enum SparseLinearCache<T> {
    /// The CSR form of `relu(z)`.
    Sparse(Csr),
    /// The pre-activation and its ReLU.
    Dense {
        /// `z`.
        z: T,
        /// `relu(z)`.
        x: T,
    },
}

impl<T> SparseLinearCache<T> {
    /// Whether the forward took the sparse products.
    pub fn is_sparse(&self) -> bool {
        matches!(self, SparseLinearCache::Sparse(_))
    }
}

impl<B: SparseBackend> Module<B> for SparseLinear {
    type Cache = SparseLinearCache<B::Tensor>;

    /// # Panics
    /// If `z` is not `[n, d_in]`.
    #[track_caller]
    fn forward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        z: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache) {
        let [n, k] = b.shape(z);
        assert_eq!(
            k, self.d_in,
            "SparseLinear: input has {k} columns, not {}",
            self.d_in
        );
        let (w, bias) = (p.get(self.weight), p.get(self.bias));
        // A device error while counting or building falls back to the dense products; the
        // device keeps the error, so the next download or synchronize reports it.
        let density = b
            .count_kept(z, Select::Relu)
            .map_or(1.0, |kept| kept as f64 / (n * k).max(1) as f64);
        if self.dispatch.sparse(n, density)
            && let Ok(s) = b.sparsify(z, Select::Relu)
        {
            let y = b.sparse_linear(&s, w, Some(bias));
            return (y, SparseLinearCache::Sparse(s));
        }
        let x = b.unary(UnaryOp::Relu, z);
        let mut y = b.zeros([n, self.d_out]);
        b.matmul(1.0, &x, Transpose::No, w, Transpose::No, 0.0, &mut y);
        b.add_row(&mut y, bias);
        (
            y,
            SparseLinearCache::Dense {
                z: b.duplicate(z),
                x,
            },
        )
    }

    fn backward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        cache: Self::Cache,
        dy: &B::Tensor,
        g: &mut Grads<B>,
    ) -> B::Tensor {
        let w = p.get(self.weight);
        g.accumulate(b, self.bias, &b.reduce_cols(ReduceOp::Sum, dy));
        let (dw, beta) = g.product_entry(b, self.weight, [self.d_in, self.d_out]);
        match cache {
            SparseLinearCache::Sparse(s) => {
                b.sparse_matmul(&s.transpose(), dy, None, beta, dw);
                b.sampled_matmul_t(&s, dy, w)
            }
            SparseLinearCache::Dense { z, x } => {
                b.matmul(1.0, &x, Transpose::Yes, dy, Transpose::No, beta, dw);
                let mut dx = b.zeros(b.shape(&z));
                b.matmul(1.0, dy, Transpose::No, w, Transpose::Yes, 0.0, &mut dx);
                b.unary_backward(UnaryOp::Relu, &z, &x, &dx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crossover_interpolates_between_measured_rows_and_clamps_outside() {
        assert_eq!(crossover(0), CROSSOVER[0].1);
        assert_eq!(crossover(1), CROSSOVER[0].1);
        assert_eq!(crossover(1 << 20), CROSSOVER[3].1);
        let (n0, d0) = CROSSOVER[1];
        let (n1, d1) = CROSSOVER[2];
        let mid = crossover(((n0 * n1) as f64).sqrt().round() as usize);
        assert!((mid - (d0 + d1) / 2.0).abs() < 0.01, "{mid}");
        assert!(Dispatch::Below(0.5).sparse(1, 0.49) && !Dispatch::Below(0.5).sparse(1, 0.5));
        assert!(Dispatch::Sparse.sparse(8, 1.0) && !Dispatch::Dense.sparse(8, 0.0));
    }
}
