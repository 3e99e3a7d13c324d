//! The [`Backend`] trait: every numeric primitive modula's layers need, checked once in front
//! of every backend.

use crate::check;
use crate::error::BackendError;
use crate::kernels::{GroupedKernels, Kernels};
use crate::ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d,
};

/// A compute backend: a value that owns its context (thread pool, device, queues) and executes
/// tensor operations on device-resident tensors. This is the trait every layer, model and
/// task is generic over.
///
/// Nobody implements it by hand: a backend implements [`Kernels`] (the core operations) and
/// [`GroupedKernels`] (the routed products, with default bodies), and gets `Backend` from the
/// blanket implementation, which runs each operation's contract checks ([`crate::check`])
/// and then calls the kernel. So every backend panics alike on misuse, and no backend checks
/// anything itself.
///
/// Design rules, chosen so that a GPU backend can implement the same kernels:
/// - tensors live on the device; [`Backend::upload`] and [`Backend::download`] are the only
///   transfers, and downloads are where device failures surface;
/// - index lists (`&[u32]`) are plain host slices, uploaded by the backend as it sees fit;
/// - no operation requires floating-point atomics: scatter-adds with repeated indices must be
///   computed by the backend deterministically (for example by sorting indices);
/// - operations panic on contract violations (mismatched shapes, out-of-range indices), with
///   the caller's location.
///
/// Outputs are fresh tensors unless the method takes `&mut`, in which case it updates in place.
pub trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A device-resident f32 matrix.
    type Tensor: Send + Sync + std::fmt::Debug;

    /// Human-readable name of the backend and its device.
    fn name(&self) -> String;

    /// Shape of a tensor.
    fn shape(&self, t: &Self::Tensor) -> Shape;

    /// Copies host data (row-major) into a new device tensor.
    ///
    /// # Panics
    /// If `data.len() != shape[0] * shape[1]`.
    fn upload(&self, shape: Shape, data: &[f32]) -> Self::Tensor;

    /// Copies a tensor back to the host, row-major, waiting for pending work.
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>, BackendError>;

    /// Waits until all submitted work has finished, reporting device failures.
    fn synchronize(&self) -> Result<(), BackendError>;

    /// A new tensor of zeros.
    fn zeros(&self, shape: Shape) -> Self::Tensor;

    /// Sets every element to `value`.
    fn fill(&self, t: &mut Self::Tensor, value: f32);

    /// A deep copy of `t` (tensors are not `Clone`, so that device handles never alias).
    fn duplicate(&self, t: &Self::Tensor) -> Self::Tensor;

    /// Reinterprets a tensor with a new shape of the same size, without copying.
    ///
    /// # Panics
    /// If the element counts differ.
    fn reshape(&self, t: Self::Tensor, shape: Shape) -> Self::Tensor;

    /// General matrix product `C = alpha * op(A) * op(B) + beta * C`.
    ///
    /// With `beta == 0` the previous contents of `C` are ignored (even NaN).
    ///
    /// # Panics
    /// If the shapes of `op(A)`, `op(B)` and `C` do not chain.
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

    /// `op(x)` elementwise.
    fn unary(&self, op: UnaryOp, x: &Self::Tensor) -> Self::Tensor;

    /// Gradient of [`Backend::unary`]: `dx = dy * op'(x)`, given `y = op(x)`.
    ///
    /// # Panics
    /// If the three shapes differ.
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Self::Tensor,
        y: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Self::Tensor;

    /// `op(a, b)` elementwise.
    ///
    /// # Panics
    /// If the shapes differ.
    fn binary(&self, op: BinaryOp, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// Gradient of [`Backend::binary`]: `(da, db) = (dy * d/da, dy * d/db)`.
    ///
    /// # Panics
    /// If the shapes differ.
    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);

    /// Broadcast row add: `x[i, :] += row[0, :]` for every row `i`.
    ///
    /// # Panics
    /// If `row` is not `[1, cols(x)]`.
    fn add_row(&self, x: &mut Self::Tensor, row: &Self::Tensor);

    /// Per-row scaling: `x[i, :] *= s[i, 0]`.
    ///
    /// # Panics
    /// If `s` is not `[rows(x), 1]`.
    fn scale_rows(&self, x: &mut Self::Tensor, s: &Self::Tensor);

    /// Row-wise dot products: `out[i, 0] = sum_j a[i, j] * b[i, j]`.
    ///
    /// # Panics
    /// If the shapes differ.
    fn row_dot(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;

    /// Reduces each row to one value: shape `[rows, 1]`.
    fn reduce_rows(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor;

    /// Reduces each column to one value: shape `[1, cols]`.
    fn reduce_cols(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor;

    /// Row-wise `log_softmax`, computed stably (max-shifted).
    fn log_softmax_rows(&self, x: &Self::Tensor) -> Self::Tensor;

    /// Gradient of [`Backend::log_softmax_rows`] given its output `y`:
    /// `dx = dy - exp(y) * sum_j dy[i, j]`.
    ///
    /// # Panics
    /// If the shapes differ.
    fn log_softmax_rows_backward(&self, y: &Self::Tensor, dy: &Self::Tensor) -> Self::Tensor;

    /// [`Backend::log_softmax_rows`] of a tensor the caller gives up, so a backend may write
    /// the result over it (for a language model's `[tokens, vocabulary]` logits this saves a
    /// buffer and a pass over it).
    fn log_softmax_rows_owned(&self, x: Self::Tensor) -> Self::Tensor;

    /// Gradient of the per-row cross-entropy `nll[i] = -log_probs[i, targets[i]]` with respect
    /// to the logits that [`Backend::log_softmax_rows`] turned into `log_probs`, given
    /// `d_nll [rows, 1]`: `d_logits[i, j] = d_nll[i] * (exp(log_probs[i, j]) - [j == targets[i]])`.
    ///
    /// # Panics
    /// If `targets.len()` or `d_nll`'s shape does not match the rows, or a target is out of
    /// range.
    fn cross_entropy_backward(
        &self,
        log_probs: &Self::Tensor,
        targets: &[u32],
        d_nll: &Self::Tensor,
    ) -> Self::Tensor;

    /// Gathers rows: `out[i, :] = x[idx[i], :]`.
    ///
    /// # Panics
    /// If an index is out of range.
    fn gather_rows(&self, x: &Self::Tensor, idx: &[u32]) -> Self::Tensor;

    /// Scatter-add rows: `dst[idx[i], :] += src[i, :]`; repeated indices accumulate.
    ///
    /// # Panics
    /// If `idx.len() != rows(src)`, the column counts differ or an index is out of range.
    fn scatter_add_rows(&self, dst: &mut Self::Tensor, src: &Self::Tensor, idx: &[u32]);

    /// Picks one column per row: `out[i, 0] = x[i, cols[i]]`.
    ///
    /// # Panics
    /// If `cols.len() != rows(x)` or a column is out of range.
    fn pick_cols(&self, x: &Self::Tensor, cols: &[u32]) -> Self::Tensor;

    /// Adds one value per row at one column: `dst[i, cols[i]] += values[i, 0]`.
    ///
    /// # Panics
    /// If `cols.len() != rows(dst)`, `values` is not `[rows(dst), 1]` or a column is out of range.
    fn add_at_cols(&self, dst: &mut Self::Tensor, cols: &[u32], values: &Self::Tensor);

    /// Copies a block of columns: `dst[:, dst_col..dst_col+width] = src[:, src_col..src_col+width]`
    /// (with `accumulate`, adds instead of overwriting). Concatenation and slicing are built
    /// from this.
    ///
    /// # Panics
    /// If the row counts differ or a column range is out of bounds.
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

    /// `y += alpha * x`.
    ///
    /// # Panics
    /// If the shapes differ.
    fn axpy(&self, alpha: f32, x: &Self::Tensor, y: &mut Self::Tensor);

    /// `x *= alpha`.
    fn scale(&self, x: &mut Self::Tensor, alpha: f32);

    /// Unfolds NHWC images `[n, H*W*C]` into patches `[n*OH*OW, kh*kw*C]` (zeros where the
    /// window covers padding); patch elements are ordered `(ky, kx, c)`.
    ///
    /// # Panics
    /// If `x` is not `[n, window.in_len()]`.
    fn im2col(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Adjoint of [`Backend::im2col`]: sums patch gradients back into an image gradient
    /// `[n, H*W*C]`.
    ///
    /// # Panics
    /// If `cols` is not `[n*OH*OW, window.patch_len()]`.
    fn col2im(&self, cols: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Max pooling of NHWC images `[n, H*W*C]` to `[n, OH*OW*C]`, per channel.
    ///
    /// # Panics
    /// If `x` is not `[n, window.in_len()]` or the window has padding.
    fn max_pool2d(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor;

    /// Gradient of [`Backend::max_pool2d`]: each output gradient goes to the first maximal
    /// input of its window (windows may overlap; contributions add).
    ///
    /// # Panics
    /// If the shapes do not match the window.
    fn max_pool2d_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        window: &Window2d,
    ) -> Self::Tensor;

    /// One Adam step in place over a parameter tensor and its moment estimates
    /// (the elementwise rule is [`AdamStep::update`]).
    ///
    /// # Panics
    /// If the four shapes differ.
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamStep,
    );

    /// One SGD-with-momentum step in place (the elementwise rule is [`SgdStep::update`]).
    ///
    /// # Panics
    /// If the three shapes differ.
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        velocity: &mut Self::Tensor,
        step: &SgdStep,
    );

    /// Grouped matrix product for routed layers: one product per group `g`, where the rows of
    /// the row-segmented operands that belong to group `g` are `offsets[g]..offsets[g + 1]`
    /// and the stacked operand holds one `[d_in, d_out]` block per group (see [`GroupedOp`]):
    ///
    /// - `XW`:  `c_g = a_g * b_g + beta * c_g` (a: `[P, d_in]`, b: `[G*d_in, d_out]`, c: `[P, d_out]`);
    /// - `XWt`: `c_g = a_g * b_g^T + beta * c_g` (a: `[P, d_out]`, b: `[G*d_in, d_out]`, c: `[P, d_in]`);
    /// - `XtY`: `c_g = a_g^T * b_g + beta * c_g` (a: `[P, d_in]`, b: `[P, d_out]`, c: `[G*d_in, d_out]`).
    ///
    /// `G = offsets.len() - 1`; empty groups are skipped (for `XtY` their block becomes
    /// `beta * c_g`). With `beta == 0`, old contents of `c` are ignored.
    ///
    /// # Panics
    /// If `offsets` is empty, not non-decreasing, does not end at `P`, or the shapes disagree.
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        offsets: &[u32],
        beta: f32,
        c: &mut Self::Tensor,
    );

    /// [`Backend::grouped_matmul`] whose row-segmented inputs are read through `rows`: pair
    /// `p` of the routing order is row `rows[p]` of `a` (and, for `XtY`, of `b`), so a routed
    /// layer need not first copy its inputs into routing order. `c` is in routing order for
    /// `XW` and `XWt` (`[rows.len(), _]`), and `offsets` segments `rows`.
    /// (The CPU backend reads through the index while it packs each group's operand.)
    ///
    /// # Panics
    /// As [`Backend::grouped_matmul`], or if an entry of `rows` is out of range.
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
    );

    /// The per-pair products of a routed layer in a new tensor, in routing order
    /// (`[rows.len(), _]`), with the row-segmented input read through `rows` as in
    /// [`Backend::grouped_matmul_rows`]: `XW` (adding row `g` of `bias`, `[G, d_out]`, to
    /// each of group `g`'s rows when given) or `XWt` (no bias).
    /// (The CPU backend writes each element once, storing the bias with the product.)
    ///
    /// # Panics
    /// As [`Backend::grouped_matmul_rows`]; also if `op` is `XtY` (a weight gradient
    /// accumulates: use `grouped_matmul_rows`), or `bias` is given for `XWt` or is not
    /// `[G, d_out]`.
    fn grouped_product_rows(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        rows: &[u32],
        offsets: &[u32],
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor;

    /// Segmented gather-sum: `out[i, :] = sum over j in ptr[i]..ptr[i+1] of src[pos[j], :]`,
    /// shape `[ptr.len() - 1, cols]`. This combines routed rows without atomics: each output
    /// row reads its own list of source rows.
    ///
    /// # Panics
    /// If `ptr` is empty or not non-decreasing, `ptr` does not end at `pos.len()`, or a
    /// position is out of range.
    fn segment_sum_rows(&self, src: &Self::Tensor, pos: &[u32], ptr: &[u32]) -> Self::Tensor;

    /// Indexed row add: `dst[i, :] += table[idx[i], :]` (for example per-module biases).
    ///
    /// # Panics
    /// If `idx.len() != rows(dst)`, the column counts differ, or an index is out of range.
    fn add_gathered_rows(&self, dst: &mut Self::Tensor, table: &Self::Tensor, idx: &[u32]);
}

/// The one front of every backend: each operation's checks, then its kernel. Being a blanket
/// implementation, it cannot be bypassed or overridden, so a kernel may rely on the checks.
impl<K: GroupedKernels> Backend for K {
    type Tensor = K::Tensor;

    fn name(&self) -> String {
        Kernels::name(self)
    }

    fn shape(&self, t: &Self::Tensor) -> Shape {
        Kernels::shape(self, t)
    }

    #[track_caller]
    fn upload(&self, shape: Shape, data: &[f32]) -> Self::Tensor {
        check::data_len(shape, data.len());
        Kernels::upload(self, shape, data)
    }

    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>, BackendError> {
        Kernels::download(self, t)
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        Kernels::synchronize(self)
    }

    fn zeros(&self, shape: Shape) -> Self::Tensor {
        Kernels::zeros(self, shape)
    }

    fn fill(&self, t: &mut Self::Tensor, value: f32) {
        Kernels::fill(self, t, value)
    }

    fn duplicate(&self, t: &Self::Tensor) -> Self::Tensor {
        Kernels::duplicate(self, t)
    }

    #[track_caller]
    fn reshape(&self, t: Self::Tensor, shape: Shape) -> Self::Tensor {
        let [rows, cols] = Kernels::shape(self, &t);
        check::data_len(shape, rows * cols);
        Kernels::reshape(self, t, shape)
    }

    #[track_caller]
    fn matmul(
        &self,
        alpha: f32,
        a: &Self::Tensor,
        trans_a: Transpose,
        b: &Self::Tensor,
        trans_b: Transpose,
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        check::matmul(
            Kernels::shape(self, a),
            trans_a,
            Kernels::shape(self, b),
            trans_b,
            Kernels::shape(self, c),
        );
        Kernels::matmul(self, alpha, a, trans_a, b, trans_b, beta, c)
    }

    fn unary(&self, op: UnaryOp, x: &Self::Tensor) -> Self::Tensor {
        Kernels::unary(self, op, x)
    }

    #[track_caller]
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Self::Tensor,
        y: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> Self::Tensor {
        check::same_shape(
            "unary_backward",
            Kernels::shape(self, x),
            Kernels::shape(self, y),
        );
        check::same_shape(
            "unary_backward",
            Kernels::shape(self, x),
            Kernels::shape(self, dy),
        );
        Kernels::unary_backward(self, op, x, y, dy)
    }

    #[track_caller]
    fn binary(&self, op: BinaryOp, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor {
        check::same_shape("binary", Kernels::shape(self, a), Kernels::shape(self, b));
        Kernels::binary(self, op, a, b)
    }

    #[track_caller]
    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor) {
        check::same_shape(
            "binary_backward",
            Kernels::shape(self, a),
            Kernels::shape(self, b),
        );
        check::same_shape(
            "binary_backward",
            Kernels::shape(self, a),
            Kernels::shape(self, dy),
        );
        Kernels::binary_backward(self, op, a, b, dy)
    }

    #[track_caller]
    fn add_row(&self, x: &mut Self::Tensor, row: &Self::Tensor) {
        check::same_shape(
            "add_row",
            [1, Kernels::shape(self, x)[1]],
            Kernels::shape(self, row),
        );
        Kernels::add_row(self, x, row)
    }

    #[track_caller]
    fn scale_rows(&self, x: &mut Self::Tensor, s: &Self::Tensor) {
        check::same_shape(
            "scale_rows",
            [Kernels::shape(self, x)[0], 1],
            Kernels::shape(self, s),
        );
        Kernels::scale_rows(self, x, s)
    }

    #[track_caller]
    fn row_dot(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor {
        check::same_shape("row_dot", Kernels::shape(self, a), Kernels::shape(self, b));
        Kernels::row_dot(self, a, b)
    }

    fn reduce_rows(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor {
        Kernels::reduce_rows(self, op, x)
    }

    fn reduce_cols(&self, op: ReduceOp, x: &Self::Tensor) -> Self::Tensor {
        Kernels::reduce_cols(self, op, x)
    }

    fn log_softmax_rows(&self, x: &Self::Tensor) -> Self::Tensor {
        Kernels::log_softmax_rows(self, x)
    }

    #[track_caller]
    fn log_softmax_rows_backward(&self, y: &Self::Tensor, dy: &Self::Tensor) -> Self::Tensor {
        check::same_shape(
            "log_softmax_rows_backward",
            Kernels::shape(self, y),
            Kernels::shape(self, dy),
        );
        Kernels::log_softmax_rows_backward(self, y, dy)
    }

    fn log_softmax_rows_owned(&self, x: Self::Tensor) -> Self::Tensor {
        Kernels::log_softmax_rows_owned(self, x)
    }

    #[track_caller]
    fn cross_entropy_backward(
        &self,
        log_probs: &Self::Tensor,
        targets: &[u32],
        d_nll: &Self::Tensor,
    ) -> Self::Tensor {
        let [rows, cols] = Kernels::shape(self, log_probs);
        check::one_per_row("cross_entropy_backward", "target", targets.len(), rows);
        check::same_shape(
            "cross_entropy_backward",
            [rows, 1],
            Kernels::shape(self, d_nll),
        );
        check::indices("cross_entropy_backward", targets, cols);
        Kernels::cross_entropy_backward(self, log_probs, targets, d_nll)
    }

    #[track_caller]
    fn gather_rows(&self, x: &Self::Tensor, idx: &[u32]) -> Self::Tensor {
        check::indices("gather_rows", idx, Kernels::shape(self, x)[0]);
        Kernels::gather_rows(self, x, idx)
    }

    #[track_caller]
    fn scatter_add_rows(&self, dst: &mut Self::Tensor, src: &Self::Tensor, idx: &[u32]) {
        let [rows, cols] = Kernels::shape(self, dst);
        check::same_shape(
            "scatter_add_rows",
            [idx.len(), cols],
            Kernels::shape(self, src),
        );
        check::indices("scatter_add_rows", idx, rows);
        Kernels::scatter_add_rows(self, dst, src, idx)
    }

    #[track_caller]
    fn pick_cols(&self, x: &Self::Tensor, cols: &[u32]) -> Self::Tensor {
        let shape = Kernels::shape(self, x);
        check::one_per_row("pick_cols", "column", cols.len(), shape[0]);
        check::indices("pick_cols", cols, shape[1]);
        Kernels::pick_cols(self, x, cols)
    }

    #[track_caller]
    fn add_at_cols(&self, dst: &mut Self::Tensor, cols: &[u32], values: &Self::Tensor) {
        let shape = Kernels::shape(self, dst);
        check::one_per_row("add_at_cols", "column", cols.len(), shape[0]);
        check::same_shape("add_at_cols", [shape[0], 1], Kernels::shape(self, values));
        check::indices("add_at_cols", cols, shape[1]);
        Kernels::add_at_cols(self, dst, cols, values)
    }

    #[track_caller]
    fn copy_cols(
        &self,
        src: &Self::Tensor,
        src_col: usize,
        dst: &mut Self::Tensor,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        let (from, to) = (Kernels::shape(self, src), Kernels::shape(self, dst));
        check::same_rows("copy_cols", from, to);
        check::col_range("copy_cols", src_col, width, from[1]);
        check::col_range("copy_cols", dst_col, width, to[1]);
        Kernels::copy_cols(self, src, src_col, dst, dst_col, width, accumulate)
    }

    #[track_caller]
    fn axpy(&self, alpha: f32, x: &Self::Tensor, y: &mut Self::Tensor) {
        check::same_shape("axpy", Kernels::shape(self, x), Kernels::shape(self, y));
        Kernels::axpy(self, alpha, x, y)
    }

    fn scale(&self, x: &mut Self::Tensor, alpha: f32) {
        Kernels::scale(self, x, alpha)
    }

    #[track_caller]
    fn im2col(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor {
        check::images("im2col", Kernels::shape(self, x), window);
        Kernels::im2col(self, x, window)
    }

    #[track_caller]
    fn col2im(&self, cols: &Self::Tensor, window: &Window2d) -> Self::Tensor {
        check::patches("col2im", Kernels::shape(self, cols), window);
        Kernels::col2im(self, cols, window)
    }

    #[track_caller]
    fn max_pool2d(&self, x: &Self::Tensor, window: &Window2d) -> Self::Tensor {
        check::images("max_pool2d", Kernels::shape(self, x), window);
        check::pooling("max_pool2d", window);
        Kernels::max_pool2d(self, x, window)
    }

    #[track_caller]
    fn max_pool2d_backward(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        window: &Window2d,
    ) -> Self::Tensor {
        let shape = Kernels::shape(self, x);
        check::images("max_pool2d_backward", shape, window);
        check::pooling("max_pool2d_backward", window);
        let pooled = window.out_height() * window.out_width() * window.channels;
        check::same_shape(
            "max_pool2d_backward",
            [shape[0], pooled],
            Kernels::shape(self, dy),
        );
        Kernels::max_pool2d_backward(self, x, dy, window)
    }

    #[track_caller]
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamStep,
    ) {
        let shape = Kernels::shape(self, param);
        check::same_shape("adam_step", shape, Kernels::shape(self, grad));
        check::same_shape("adam_step", shape, Kernels::shape(self, m));
        check::same_shape("adam_step", shape, Kernels::shape(self, v));
        Kernels::adam_step(self, param, grad, m, v, step)
    }

    #[track_caller]
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        velocity: &mut Self::Tensor,
        step: &SgdStep,
    ) {
        let shape = Kernels::shape(self, param);
        check::same_shape("sgd_step", shape, Kernels::shape(self, grad));
        check::same_shape("sgd_step", shape, Kernels::shape(self, velocity));
        Kernels::sgd_step(self, param, grad, velocity, step)
    }

    #[track_caller]
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        offsets: &[u32],
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        check::grouped(
            op,
            Kernels::shape(self, a),
            Kernels::shape(self, b),
            offsets,
            Kernels::shape(self, c),
        );
        GroupedKernels::grouped_matmul(self, op, a, b, offsets, beta, c)
    }

    #[track_caller]
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
        let (sa, sb, sc) = (
            Kernels::shape(self, a),
            Kernels::shape(self, b),
            Kernels::shape(self, c),
        );
        check::grouped_rows(op, sa, sb, rows, offsets, sc);
        GroupedKernels::grouped_matmul_rows(self, op, a, b, rows, offsets, beta, c)
    }

    #[track_caller]
    fn grouped_product_rows(
        &self,
        op: GroupedOp,
        a: &Self::Tensor,
        b: &Self::Tensor,
        rows: &[u32],
        offsets: &[u32],
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        let bias_shape = bias.map(|t| Kernels::shape(self, t));
        check::grouped_product(
            op,
            Kernels::shape(self, a),
            Kernels::shape(self, b),
            rows,
            offsets,
            bias_shape,
        );
        GroupedKernels::grouped_product_rows(self, op, a, b, rows, offsets, bias)
    }

    #[track_caller]
    fn segment_sum_rows(&self, src: &Self::Tensor, pos: &[u32], ptr: &[u32]) -> Self::Tensor {
        check::offsets("segment_sum_rows", ptr, pos.len());
        check::indices("segment_sum_rows", pos, Kernels::shape(self, src)[0]);
        GroupedKernels::segment_sum_rows(self, src, pos, ptr)
    }

    #[track_caller]
    fn add_gathered_rows(&self, dst: &mut Self::Tensor, table: &Self::Tensor, idx: &[u32]) {
        let (to, from) = (Kernels::shape(self, dst), Kernels::shape(self, table));
        check::one_per_row("add_gathered_rows", "index", idx.len(), to[0]);
        check::same_cols("add_gathered_rows", from, to);
        check::indices("add_gathered_rows", idx, from[0]);
        GroupedKernels::add_gathered_rows(self, dst, table, idx)
    }
}
