//! [`CoreOnly`]: a backend's core kernels with the default grouped kernels.

use crate::error::BackendError;
use crate::kernels::{GroupedKernels, Kernels};
use crate::ops::{AdamStep, BinaryOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d};

/// The backend `B` with only its core [`Kernels`]: every grouped product runs the default
/// body of [`GroupedKernels`], built from `B`'s core operations. Running the conformance
/// suite on it checks those default bodies, which any backend that does not override them
/// (a new one, say) relies on.
#[derive(Clone, Debug, Default)]
pub struct CoreOnly<B>(pub B);

/// Nothing is overridden: this empty impl is the point of the wrapper.
impl<B: Kernels> GroupedKernels for CoreOnly<B> {}

impl<B: Kernels> Kernels for CoreOnly<B> {
    type Tensor = B::Tensor;

    fn name(&self) -> String {
        format!("{} (core kernels only)", self.0.name())
    }

    fn shape(&self, t: &B::Tensor) -> Shape {
        self.0.shape(t)
    }

    fn upload(&self, shape: Shape, data: &[f32]) -> B::Tensor {
        self.0.upload(shape, data)
    }

    fn download(&self, t: &B::Tensor) -> Result<Vec<f32>, BackendError> {
        self.0.download(t)
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        self.0.synchronize()
    }

    fn zeros(&self, shape: Shape) -> B::Tensor {
        self.0.zeros(shape)
    }

    fn fill(&self, t: &mut B::Tensor, value: f32) {
        self.0.fill(t, value)
    }

    fn duplicate(&self, t: &B::Tensor) -> B::Tensor {
        self.0.duplicate(t)
    }

    fn reshape(&self, t: B::Tensor, shape: Shape) -> B::Tensor {
        self.0.reshape(t, shape)
    }

    fn matmul(
        &self,
        alpha: f32,
        a: &B::Tensor,
        trans_a: Transpose,
        b: &B::Tensor,
        trans_b: Transpose,
        beta: f32,
        c: &mut B::Tensor,
    ) {
        self.0.matmul(alpha, a, trans_a, b, trans_b, beta, c)
    }

    fn unary(&self, op: UnaryOp, x: &B::Tensor) -> B::Tensor {
        self.0.unary(op, x)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &B::Tensor,
        y: &B::Tensor,
        dy: &B::Tensor,
    ) -> B::Tensor {
        self.0.unary_backward(op, x, y, dy)
    }

    fn binary(&self, op: BinaryOp, a: &B::Tensor, b: &B::Tensor) -> B::Tensor {
        self.0.binary(op, a, b)
    }

    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &B::Tensor,
        b: &B::Tensor,
        dy: &B::Tensor,
    ) -> (B::Tensor, B::Tensor) {
        self.0.binary_backward(op, a, b, dy)
    }

    fn add_row(&self, x: &mut B::Tensor, row: &B::Tensor) {
        self.0.add_row(x, row)
    }

    fn scale_rows(&self, x: &mut B::Tensor, s: &B::Tensor) {
        self.0.scale_rows(x, s)
    }

    fn row_dot(&self, a: &B::Tensor, b: &B::Tensor) -> B::Tensor {
        self.0.row_dot(a, b)
    }

    fn reduce_rows(&self, op: ReduceOp, x: &B::Tensor) -> B::Tensor {
        self.0.reduce_rows(op, x)
    }

    fn reduce_cols(&self, op: ReduceOp, x: &B::Tensor) -> B::Tensor {
        self.0.reduce_cols(op, x)
    }

    fn log_softmax_rows(&self, x: &B::Tensor) -> B::Tensor {
        self.0.log_softmax_rows(x)
    }

    fn log_softmax_rows_backward(&self, y: &B::Tensor, dy: &B::Tensor) -> B::Tensor {
        self.0.log_softmax_rows_backward(y, dy)
    }

    fn log_softmax_rows_owned(&self, x: B::Tensor) -> B::Tensor {
        self.0.log_softmax_rows_owned(x)
    }

    fn cross_entropy_backward(
        &self,
        log_probs: &B::Tensor,
        targets: &[u32],
        d_nll: &B::Tensor,
    ) -> B::Tensor {
        self.0.cross_entropy_backward(log_probs, targets, d_nll)
    }

    fn gather_rows(&self, x: &B::Tensor, idx: &[u32]) -> B::Tensor {
        self.0.gather_rows(x, idx)
    }

    fn scatter_add_rows(&self, dst: &mut B::Tensor, src: &B::Tensor, idx: &[u32]) {
        self.0.scatter_add_rows(dst, src, idx)
    }

    fn pick_cols(&self, x: &B::Tensor, cols: &[u32]) -> B::Tensor {
        self.0.pick_cols(x, cols)
    }

    fn add_at_cols(&self, dst: &mut B::Tensor, cols: &[u32], values: &B::Tensor) {
        self.0.add_at_cols(dst, cols, values)
    }

    fn copy_cols(
        &self,
        src: &B::Tensor,
        src_col: usize,
        dst: &mut B::Tensor,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        self.0
            .copy_cols(src, src_col, dst, dst_col, width, accumulate)
    }

    fn axpy(&self, alpha: f32, x: &B::Tensor, y: &mut B::Tensor) {
        self.0.axpy(alpha, x, y)
    }

    fn scale(&self, x: &mut B::Tensor, alpha: f32) {
        self.0.scale(x, alpha)
    }

    fn im2col(&self, x: &B::Tensor, window: &Window2d) -> B::Tensor {
        self.0.im2col(x, window)
    }

    fn col2im(&self, cols: &B::Tensor, window: &Window2d) -> B::Tensor {
        self.0.col2im(cols, window)
    }

    fn max_pool2d(&self, x: &B::Tensor, window: &Window2d) -> B::Tensor {
        self.0.max_pool2d(x, window)
    }

    fn max_pool2d_backward(&self, x: &B::Tensor, dy: &B::Tensor, window: &Window2d) -> B::Tensor {
        self.0.max_pool2d_backward(x, dy, window)
    }

    fn adam_step(
        &self,
        param: &mut B::Tensor,
        grad: &B::Tensor,
        m: &mut B::Tensor,
        v: &mut B::Tensor,
        step: &AdamStep,
    ) {
        self.0.adam_step(param, grad, m, v, step)
    }

    fn sgd_step(
        &self,
        param: &mut B::Tensor,
        grad: &B::Tensor,
        velocity: &mut B::Tensor,
        step: &SgdStep,
    ) {
        self.0.sgd_step(param, grad, velocity, step)
    }
}
