//! What a backend implements: [`Kernels`], the core operations, and [`GroupedKernels`], the
//! routed products, an extension whose every operation has a default body built from core
//! operations.
//!
//! Callers never use these traits: they call [`crate::Backend`], which every type
//! implementing both traits gets for free, and which checks each call's shapes and indices
//! (with [`crate::check`]) before it reaches a kernel. So a kernel may assume a well-formed
//! call, and no backend repeats the checks.
//!
//! A backend that accelerates nothing beyond the core writes `impl GroupedKernels for X {}`:
//! the empty impl is correct (the conformance suite runs it, see
//! `modula_tensor::conformance::CoreOnly`) and makes the opt-in visible. A backend overrides
//! the grouped kernels it can do better, as the CPU and WGSL backends do.

use crate::error::BackendError;
use crate::ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d,
};

/// The core operations of a backend, unchecked. Each is the kernel of the
/// [`crate::Backend`] method of the same name, whose documentation gives its meaning; it is
/// only ever called after that method's checks passed.
///
/// See [`crate::Backend`] for the design rules (device-resident tensors, host index slices,
/// no floating-point atomics, deterministic scatter-adds).
pub trait Kernels: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A device-resident f32 matrix.
    type Tensor: Send + Sync + std::fmt::Debug;

    /// Kernel of [`Backend::name`](crate::Backend::name).
    fn name(&self) -> String;

    /// Kernel of [`Backend::shape`](crate::Backend::shape).
    fn shape(&self, t: &Self::Tensor) -> Shape;

    /// Kernel of [`Backend::upload`](crate::Backend::upload); `data` holds exactly `shape[0] * shape[1]` values.
    fn upload(&self, shape: Shape, data: &[f32]) -> Self::Tensor;

    /// Kernel of [`Backend::download`](crate::Backend::download).
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>, BackendError>;

    /// Kernel of [`Backend::synchronize`](crate::Backend::synchronize).
    fn synchronize(&self) -> Result<(), BackendError>;

    /// Kernel of [`Backend::zeros`](crate::Backend::zeros).
    fn zeros(&self, shape: Shape) -> Self::Tensor;

    /// Kernel of [`Backend::fill`](crate::Backend::fill).
    fn fill(&self, t: &mut Self::Tensor, value: f32);

    /// Kernel of [`Backend::duplicate`](crate::Backend::duplicate).
    fn duplicate(&self, t: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::reshape`](crate::Backend::reshape); the element counts agree.
    fn reshape(&self, t: Self::Tensor, shape: Shape) -> Self::Tensor;

    /// Kernel of [`Backend::matmul`](crate::Backend::matmul); the shapes chain.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        alpha: f32,
        a: &Self::Tensor,
        trans_a: Transpose,
        b: &Self::Tensor,
        trans_b: Transpose,
        beta: f32,
        c: &mut Self::Tensor,
    );

    /// Kernel of [`Backend::unary`](crate::Backend::unary).
    fn unary(&self, op: UnaryOp, x: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::unary_backward`](crate::Backend::unary_backward).
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Self::Tensor,
        y: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Self::Tensor;

    /// Kernel of [`Backend::binary`](crate::Backend::binary).
    fn binary(&self, op: BinaryOp, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::binary_backward`](crate::Backend::binary_backward).
    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);

    /// Kernel of [`Backend::add_row`](crate::Backend::add_row).
    fn add_row(&self, x: &mut Self::Tensor, row: &Self::Tensor);

    /// Kernel of [`Backend::scale_rows`](crate::Backend::scale_rows).
    fn scale_rows(&self, x: &mut Self::Tensor, s: &Self::Tensor);

    /// Kernel of [`Backend::row_dot`](crate::Backend::row_dot).
    fn row_dot(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::reduce_rows`](crate::Backend::reduce_rows).
    fn reduce_rows(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::reduce_cols`](crate::Backend::reduce_cols).
    fn reduce_cols(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::log_softmax_rows`](crate::Backend::log_softmax_rows).
    fn log_softmax_rows(&self, x: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::log_softmax_rows_backward`](crate::Backend::log_softmax_rows_backward).
    fn log_softmax_rows_backward(&self, y: &Self::Tensor, dy: &Self::Tensor) -> Self::Tensor;

    /// Kernel of [`Backend::log_softmax_rows_owned`](crate::Backend::log_softmax_rows_owned). The default allocates like
    /// `log_softmax_rows`; a backend may write the result over `x`.
    fn log_softmax_rows_owned(&self, x: Self::Tensor) -> Self::Tensor {
        self.log_softmax_rows(&x)
    }

    /// Kernel of [`Backend::cross_entropy_backward`](crate::Backend::cross_entropy_backward). The default composes it from other
    /// kernels; a backend may do it in one pass.
    fn cross_entropy_backward(
        &self,
        log_probs: &Self::Tensor,
        targets: &[u32],
        d_nll: &Self::Tensor,
    ) -> Self::Tensor {
        let mut d = self.unary(UnaryOp::Exp, log_probs);
        self.scale_rows(&mut d, d_nll);
        let mut neg = self.duplicate(d_nll);
        self.scale(&mut neg, -1.0);
        self.add_at_cols(&mut d, targets, &neg);
        d
    }

    /// Kernel of [`Backend::gather_rows`](crate::Backend::gather_rows); every index is in range.
    fn gather_rows(&self, x: &Self::Tensor, idx: &[u32]) -> Self::Tensor;

    /// Kernel of [`Backend::scatter_add_rows`](crate::Backend::scatter_add_rows); repeated indices must accumulate
    /// deterministically.
    fn scatter_add_rows(&self, dst: &mut Self::Tensor, src: &Self::Tensor, idx: &[u32]);

    /// Kernel of [`Backend::pick_cols`](crate::Backend::pick_cols).
    fn pick_cols(&self, x: &Self::Tensor, cols: &[u32]) -> Self::Tensor;

    /// Kernel of [`Backend::add_at_cols`](crate::Backend::add_at_cols).
    fn add_at_cols(&self, dst: &mut Self::Tensor, cols: &[u32], values: &Self::Tensor);

    /// Kernel of [`Backend::copy_cols`](crate::Backend::copy_cols); both column ranges are in bounds.
    #[allow(clippy::too_many_arguments)]
    fn copy_cols(
        &self,
        src: &Self::Tensor,
        src_col: usize,
        dst: &mut Self::Tensor,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    );

    /// Kernel of [`Backend::axpy`](crate::Backend::axpy).
    fn axpy(&self, alpha: f32, x: &Self::Tensor, y: &mut Self::Tensor);

    /// Kernel of [`Backend::scale`](crate::Backend::scale).
    fn scale(&self, x: &mut Self::Tensor, alpha: f32);

    /// Kernel of [`Backend::im2col`](crate::Backend::im2col).
    fn im2col(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Kernel of [`Backend::col2im`](crate::Backend::col2im).
    fn col2im(&self, cols: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Kernel of [`Backend::max_pool2d`](crate::Backend::max_pool2d); the window has no padding.
    fn max_pool2d(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Kernel of [`Backend::max_pool2d_backward`](crate::Backend::max_pool2d_backward).
    fn max_pool2d_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        window: &Window2d,
    ) -> Self::Tensor;

    /// Kernel of [`Backend::adam_step`](crate::Backend::adam_step).
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamStep,
    );

    /// Kernel of [`Backend::sgd_step`](crate::Backend::sgd_step).
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        velocity: &mut Self::Tensor,
        step: &SgdStep,
    );
}

/// The grouped (routed) products of modular layers, an extension of [`Kernels`]. Every
/// method has a default body made of core kernels (gathers, products and scatter-adds, one
/// group at a time, on shapes the front has checked), so `impl GroupedKernels for X {}` is a
/// correct implementation; a backend overrides what it can do faster. Each method is the
/// kernel of the [`crate::Backend`] method of the same name and is only called after that
/// method's checks passed. The conformance suite runs every default body
/// (`modula_tensor::conformance::CoreOnly`).
pub trait GroupedKernels: Kernels {
    /// Kernel of [`Backend::grouped_matmul`](crate::Backend::grouped_matmul). The default runs one gathered product per
    /// non-empty group and adds it into `beta * c`.
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        offsets: &[u32],
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        let groups = offsets.len() - 1;
        let (d_in, d_out) = op.block_dims(Kernels::shape(self, b), Kernels::shape(self, c), groups);
        // Every row of a row-segmented output belongs to exactly one group, and the block of
        // an empty group in a weight gradient is `beta * c_g`: scaling all of `c` first gives
        // both. With beta = 0 the old contents (even NaN) must not survive, hence the fill.
        if beta == 0.0 {
            Kernels::fill(self, c, 0.0);
        } else {
            Kernels::scale(self, c, beta);
        }
        let block = |g: usize| (g * d_in) as u32..((g + 1) * d_in) as u32;
        for g in 0..groups {
            let seg: Vec<u32> = (offsets[g]..offsets[g + 1]).collect();
            if seg.is_empty() {
                continue;
            }
            let a_g = Kernels::gather_rows(self, a, &seg);
            match op {
                GroupedOp::XW | GroupedOp::XWt => {
                    let w = Kernels::gather_rows(self, b, &block(g).collect::<Vec<_>>());
                    let (width, tb) = match op {
                        GroupedOp::XW => (d_out, Transpose::No),
                        _ => (d_in, Transpose::Yes),
                    };
                    let mut y = Kernels::zeros(self, [seg.len(), width]);
                    Kernels::matmul(self, 1.0, &a_g, Transpose::No, &w, tb, 0.0, &mut y);
                    Kernels::scatter_add_rows(self, c, &y, &seg);
                }
                GroupedOp::XtY => {
                    let b_g = Kernels::gather_rows(self, b, &seg);
                    let mut y = Kernels::zeros(self, [d_in, d_out]);
                    Kernels::matmul(
                        self,
                        1.0,
                        &a_g,
                        Transpose::Yes,
                        &b_g,
                        Transpose::No,
                        0.0,
                        &mut y,
                    );
                    Kernels::scatter_add_rows(self, c, &y, &block(g).collect::<Vec<_>>());
                }
            }
        }
    }

    /// Kernel of [`Backend::grouped_matmul_rows`](crate::Backend::grouped_matmul_rows). The default gathers the rows into routing
    /// order and calls [`GroupedKernels::grouped_matmul`].
    #[allow(clippy::too_many_arguments)] // `grouped_matmul`'s arguments and the index.
    fn grouped_matmul_rows(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        rows: &[u32],
        offsets: &[u32],
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        let a = Kernels::gather_rows(self, a, rows);
        match op {
            GroupedOp::XW | GroupedOp::XWt => {
                GroupedKernels::grouped_matmul(self, op, &a, b, offsets, beta, c)
            }
            GroupedOp::XtY => {
                let b = Kernels::gather_rows(self, b, rows);
                GroupedKernels::grouped_matmul(self, op, &a, &b, offsets, beta, c)
            }
        }
    }

    /// Kernel of [`Backend::grouped_product_rows`](crate::Backend::grouped_product_rows). The default starts from the gathered
    /// biases (or zeros) and calls [`GroupedKernels::grouped_matmul_rows`].
    fn grouped_product_rows(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        rows: &[u32],
        offsets: &[u32],
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        let groups = offsets.len() - 1;
        let (d_in, d_out) = op.block_dims(Kernels::shape(self, b), [0, 0], groups);
        let mut c = match bias {
            Some(bias) => Kernels::gather_rows(self, bias, &segment_ids(offsets)),
            None if op == GroupedOp::XW => Kernels::zeros(self, [rows.len(), d_out]),
            None => Kernels::zeros(self, [rows.len(), d_in]),
        };
        let beta = if bias.is_some() { 1.0 } else { 0.0 };
        GroupedKernels::grouped_matmul_rows(self, op, a, b, rows, offsets, beta, &mut c);
        c
    }

    /// Kernel of [`Backend::segment_sum_rows`](crate::Backend::segment_sum_rows). The default gathers the source rows and
    /// scatter-adds each into its segment's output row.
    fn segment_sum_rows(&self, src: &Self::Tensor, pos: &[u32], ptr: &[u32]) -> Self::Tensor {
        let cols = Kernels::shape(self, src)[1];
        let rows = Kernels::gather_rows(self, src, pos);
        let mut out = Kernels::zeros(self, [ptr.len() - 1, cols]);
        Kernels::scatter_add_rows(self, &mut out, &rows, &segment_ids(ptr));
        out
    }

    /// Kernel of [`Backend::add_gathered_rows`](crate::Backend::add_gathered_rows). The default gathers the table's rows and
    /// adds them with `axpy`.
    fn add_gathered_rows(&self, dst: &mut Self::Tensor, table: &Self::Tensor, idx: &[u32]) {
        let rows = Kernels::gather_rows(self, table, idx);
        Kernels::axpy(self, 1.0, &rows, dst);
    }
}

/// For each position of a segmented list, the segment it belongs to (`ptr` holds the segment
/// boundaries, as group offsets do).
fn segment_ids(ptr: &[u32]) -> Vec<u32> {
    ptr.windows(2)
        .enumerate()
        .flat_map(|(s, w)| std::iter::repeat_n(s as u32, (w[1] - w[0]) as usize))
        .collect()
}
