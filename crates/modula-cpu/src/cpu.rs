//! [`Cpu`]: the fast CPU backend (ndarray storage, the packed GEMM of [`crate::gemm`], work
//! split across its [`crate::Team`] of threads). Its kernels see only calls that
//! `modula_tensor::Backend`'s checks accepted.

/// The grouped (routed) products of the modular layers, on the CPU.
mod grouped;
/// The sparse products of `modula_sparse`, on the CPU.
mod sparse;

use std::mem::MaybeUninit;
use std::sync::Arc;

use ndarray::Array2;

use modula_tensor::{
    AdamStep, BackendError, BinaryOp, GroupedKernels, GroupedOp, Kernels, ReduceOp, SgdStep, Shape,
    Transpose, UnaryOp, Window2d,
};

use crate::fastexp;
use crate::gemm::{self, MatMut, MatRef, Parallelism};
use crate::team::Team;

/// Elementwise work below this many elements runs on the calling thread: splitting smaller
/// jobs costs more in synchronisation than it saves.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// The CPU backend.
///
/// It carries its own team of threads ([`Team`]: the caller and `threads - 1` others that spin
/// briefly between products), so two backends with different thread counts can live in one
/// process (benches compare 1 and 2 threads side by side). Tensors are row-major
/// `ndarray::Array2<f32>` in standard layout.
///
/// ```
/// use modula_cpu::Cpu;
/// use modula_tensor::{Backend, Transpose};
/// let cpu = Cpu::with_threads(1);
/// let a = cpu.upload([2, 3], &[1., 2., 3., 4., 5., 6.]);
/// let mut c = cpu.zeros([2, 2]);
/// // C = A * A^T
/// cpu.matmul(1.0, &a, Transpose::No, &a, Transpose::Yes, 0.0, &mut c);
/// assert_eq!(cpu.download(&c).unwrap(), vec![14., 32., 32., 77.]);
/// ```
#[derive(Clone, Debug)]
pub struct Cpu {
    /// The threads that split products and elementwise work.
    team: Arc<Team>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    /// A backend using every available core.
    pub fn new() -> Self {
        Self::with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A backend using `threads` threads (at least one), the calling thread among them.
    ///
    /// # Panics
    /// If the operating system refuses to start the threads, or `threads` is 2^16 or more.
    pub fn with_threads(threads: usize) -> Self {
        Cpu {
            team: Arc::new(Team::new(threads.max(1))),
        }
    }

    /// Number of threads work is split across.
    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// The team that splits this backend's products.
    pub(crate) fn team(&self) -> &Team {
        &self.team
    }

    /// Applies `f` to aligned chunks of `out` and the inputs, in parallel when large.
    fn zip_map<const N: usize>(
        &self,
        out: &mut [f32],
        inputs: [&[f32]; N],
        f: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
    ) {
        if out.len() < PAR_MIN_ELEMS || self.threads() == 1 {
            f(out, inputs);
            return;
        }
        // One contiguous part per thread, each a whole number of 16-float vectors (so the
        // kernels' vector tails stay where they would be unsplit), on the team whose threads
        // are still spinning from the product before (see `Team`).
        let per = out.len().div_ceil(self.threads()).next_multiple_of(16);
        let parts: Vec<(usize, &mut [f32])> = out
            .chunks_mut(per)
            .enumerate()
            .map(|(c, part)| (c * per, part))
            .collect();
        Parallelism::Team(&self.team).for_each(parts, &|(start, part): (usize, &mut [f32])| {
            f(part, inputs.map(|s| &s[start..start + part.len()]));
        });
    }

    /// Applies `f` to each row of `x` (with its index), in parallel when large.
    pub(crate) fn for_rows(&self, x: &mut Array2<f32>, f: impl Fn(usize, &mut [f32]) + Sync) {
        let cols = x.ncols().max(1);
        self.each_row(slice_mut(x), cols, f);
    }

    /// Applies `f` to each `cols`-long row of `data` (with its index), on the calling thread
    /// when the data is small or the backend has one thread, else across its team.
    fn each_row<T: Send>(&self, data: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        if data.len() < PAR_MIN_ELEMS || self.threads() == 1 {
            data.chunks_mut(cols).enumerate().for_each(|(i, r)| f(i, r));
        } else {
            // One block of whole rows per thread, on the team, as in `zip_map`.
            let per = (data.len() / cols).div_ceil(self.threads()) * cols;
            let blocks: Vec<(usize, &mut [T])> = data
                .chunks_mut(per)
                .enumerate()
                .map(|(b, block)| (b * per / cols, block))
                .collect();
            Parallelism::Team(&self.team).for_each(blocks, &|(first, block): (usize, &mut [T])| {
                for (i, row) in block.chunks_mut(cols).enumerate() {
                    f(first + i, row);
                }
            });
        }
    }

    /// A new `rows x cols` matrix whose row `i` is written by `f(i, row)`, in parallel when
    /// large. Outputs that are overwritten in full skip the pass that zeroing them first would
    /// cost (for a gather of routed rows, about as long as the gather itself).
    ///
    /// `f` proves that it initialised its row by returning that row as `&mut [f32]` (which safe
    /// code can only make with [`write_row`] or [`fill_row`]).
    ///
    /// # Panics
    /// If `f` returns anything but its whole row.
    pub(crate) fn rows_from(
        &self,
        rows: usize,
        cols: usize,
        f: impl for<'r> Fn(usize, &'r mut [MaybeUninit<f32>]) -> &'r mut [f32] + Sync,
    ) -> Array2<f32> {
        let mut out = Array2::<f32>::uninit((rows, cols));
        let data = out
            .as_slice_mut()
            .expect("a new array is in standard layout");
        let row = |i: usize, r: &mut [MaybeUninit<f32>]| {
            let (start, len) = (r.as_ptr().cast::<f32>(), r.len());
            let done = f(i, r);
            assert!(
                std::ptr::eq(done.as_ptr(), start) && done.len() == len,
                "rows_from: the closure must return the whole row it was given"
            );
        };
        if cols > 0 {
            self.each_row(data, cols, row);
        }
        // SAFETY: every row was handed to `f`, which returned that same row as `&mut [f32]`;
        // such a reference to the row exists only once all of it is initialised.
        unsafe { out.assume_init() }
    }
}

/// Copies `src` into the uninitialised row `dst` (of the same length) and returns it as
/// initialised. (`write_copy_of_slice` does this from Rust 1.93, above the workspace's MSRV.)
pub(crate) fn write_row<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(dst.len(), src.len(), "write_row: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
    // SAFETY: every element of `dst` was written just above, and `MaybeUninit<f32>` has the
    // layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut(dst) as *mut [f32]) }
}

/// Sets every element of the uninitialised row `dst` to `value` and returns it as initialised.
pub(crate) fn fill_row(dst: &mut [MaybeUninit<f32>], value: f32) -> &mut [f32] {
    dst.fill(MaybeUninit::new(value));
    // SAFETY: every element of `dst` was written just above, and `MaybeUninit<f32>` has the
    // layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut(dst) as *mut [f32]) }
}

pub(crate) fn slice(t: &Array2<f32>) -> &[f32] {
    t.as_slice()
        .expect("CPU tensors are kept in standard layout")
}

pub(crate) fn slice_mut(t: &mut Array2<f32>) -> &mut [f32] {
    t.as_slice_mut()
        .expect("CPU tensors are kept in standard layout")
}

fn shape(t: &Array2<f32>) -> Shape {
    [t.nrows(), t.ncols()]
}

/// The GEMM view of `op(t)`: transposing only swaps the strides.
fn gemm_view(t: &Array2<f32>, tr: Transpose) -> MatRef<'_> {
    let v = MatRef::row_major(slice(t), t.nrows(), t.ncols());
    if tr == Transpose::Yes { v.t() } else { v }
}

fn from_vec(s: Shape, v: Vec<f32>) -> Array2<f32> {
    Array2::from_shape_vec((s[0], s[1]), v).expect("length matches shape")
}

impl Kernels for Cpu {
    type Tensor = Array2<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn shape(&self, t: &Array2<f32>) -> Shape {
        shape(t)
    }

    fn upload(&self, s: Shape, data: &[f32]) -> Array2<f32> {
        from_vec(s, data.to_vec())
    }

    fn download(&self, t: &Array2<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(slice(t).to_vec())
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn zeros(&self, s: Shape) -> Array2<f32> {
        // Filled across the team: a routed layer's per-pair buffers are megabytes, and one
        // thread's memset of 16 MiB took 1.8 ms of a 78 ms modular step.
        self.rows_from(s[0], s[1], |_, row| fill_row(row, 0.0))
    }

    fn fill(&self, t: &mut Array2<f32>, value: f32) {
        slice_mut(t).fill(value);
    }

    fn duplicate(&self, t: &Array2<f32>) -> Array2<f32> {
        // Copied across the team, like `zeros`.
        let (rows, cols) = t.dim();
        let src = slice(t);
        self.rows_from(rows, cols, |i, row| {
            write_row(row, &src[i * cols..(i + 1) * cols])
        })
    }

    fn reshape(&self, t: Array2<f32>, s: Shape) -> Array2<f32> {
        t.into_shape_with_order((s[0], s[1]))
            .expect("length checked, standard layout")
    }

    fn matmul(
        &self,
        alpha: f32,
        a: &Array2<f32>,
        ta: Transpose,
        b: &Array2<f32>,
        tb: Transpose,
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        let [m, k] = ta.apply(shape(a));
        let n = tb.apply(shape(b))[1];
        if m == 0 || n == 0 {
            return;
        }
        let (a, b) = (gemm_view(a, ta), gemm_view(b, tb));
        let c = MatMut::row_major(slice_mut(c), m, n);
        if self.threads() > 1 && gemm::worth_parallel(m, k, n) {
            // The calling thread computes a part itself and the team's threads the others.
            gemm::gemm(alpha, a, b, beta, c, Parallelism::Team(&self.team));
        } else {
            // A split costs a hand-off to another thread and back; small products stay on the
            // caller.
            gemm::gemm(alpha, a, b, beta, c, Parallelism::Sequential);
        }
    }

    fn unary(&self, op: UnaryOp, x: &Array2<f32>) -> Array2<f32> {
        let mut out = vec![0.0; x.len()];
        self.zip_map(&mut out, [slice(x)], |o, [x]| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = op.apply(x);
            }
        });
        from_vec(shape(x), out)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Array2<f32>,
        y: &Array2<f32>,
        dy: &Array2<f32>,
    ) -> Array2<f32> {
        let mut out = vec![0.0; x.len()];
        self.zip_map(
            &mut out,
            [slice(x), slice(y), slice(dy)],
            |o, [x, y, dy]| {
                for i in 0..o.len() {
                    o[i] = dy[i] * op.derivative(x[i], y[i]);
                }
            },
        );
        from_vec(shape(x), out)
    }

    fn binary(&self, op: BinaryOp, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let mut out = vec![0.0; a.len()];
        self.zip_map(&mut out, [slice(a), slice(b)], |o, [a, b]| {
            for i in 0..o.len() {
                o[i] = op.apply(a[i], b[i]);
            }
        });
        from_vec(shape(a), out)
    }

    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        dy: &Array2<f32>,
    ) -> (Array2<f32>, Array2<f32>) {
        let mut da = vec![0.0; a.len()];
        let mut db = vec![0.0; a.len()];
        self.zip_map(&mut da, [slice(a), slice(b), slice(dy)], |o, [a, b, dy]| {
            for i in 0..o.len() {
                o[i] = dy[i] * op.partials(a[i], b[i]).0;
            }
        });
        self.zip_map(&mut db, [slice(a), slice(b), slice(dy)], |o, [a, b, dy]| {
            for i in 0..o.len() {
                o[i] = dy[i] * op.partials(a[i], b[i]).1;
            }
        });
        (from_vec(shape(a), da), from_vec(shape(a), db))
    }

    fn add_row(&self, x: &mut Array2<f32>, row: &Array2<f32>) {
        let row = slice(row);
        self.for_rows(x, |_, r| {
            for (v, &b) in r.iter_mut().zip(row) {
                *v += b;
            }
        });
    }

    fn scale_rows(&self, x: &mut Array2<f32>, s: &Array2<f32>) {
        let s = slice(s);
        self.for_rows(x, |i, r| r.iter_mut().for_each(|v| *v *= s[i]));
    }

    fn row_dot(&self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        let (rows, cols) = (a.nrows(), a.ncols());
        let (a, b) = (slice(a), slice(b));
        let mut out = Array2::zeros((rows, 1));
        self.for_rows(&mut out, |i, o| {
            let (ra, rb) = (&a[i * cols..(i + 1) * cols], &b[i * cols..(i + 1) * cols]);
            o[0] = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        });
        out
    }

    fn reduce_rows(&self, op: ReduceOp, x: &Array2<f32>) -> Array2<f32> {
        let cols = x.ncols();
        let data = slice(x);
        let mut out = Array2::zeros((x.nrows(), 1));
        self.for_rows(&mut out, |i, o| {
            let row = &data[i * cols..(i + 1) * cols];
            o[0] = match op {
                ReduceOp::Sum => row.iter().sum(),
                ReduceOp::Mean => row.iter().sum::<f32>() / cols as f32,
                ReduceOp::Max => row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            };
        });
        out
    }

    fn reduce_cols(&self, op: ReduceOp, x: &Array2<f32>) -> Array2<f32> {
        let cols = x.ncols();
        let init = if op == ReduceOp::Max {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        let mut acc = vec![init; cols];
        // Row-major accumulation keeps the inner loop contiguous and vectorisable.
        for row in slice(x).chunks(cols.max(1)) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a = if op == ReduceOp::Max {
                    a.max(v)
                } else {
                    *a + v
                };
            }
        }
        if op == ReduceOp::Mean {
            acc.iter_mut().for_each(|a| *a /= x.nrows() as f32);
        }
        from_vec([1, cols], acc)
    }

    fn log_softmax_rows(&self, x: &Array2<f32>) -> Array2<f32> {
        self.log_softmax_rows_owned(x.clone())
    }

    fn log_softmax_rows_owned(&self, mut y: Array2<f32>) -> Array2<f32> {
        self.for_rows(&mut y, |_, r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + fastexp::sum_exp(r, max).ln();
            r.iter_mut().for_each(|v| *v -= lse);
        });
        y
    }

    fn cross_entropy_backward(
        &self,
        log_probs: &Array2<f32>,
        targets: &[u32],
        d_nll: &Array2<f32>,
    ) -> Array2<f32> {
        let [rows, cols] = shape(log_probs);
        let (lp, dn) = (slice(log_probs), slice(d_nll));
        let mut d = Array2::zeros((rows, cols));
        self.for_rows(&mut d, |i, row| {
            fastexp::scaled_exp_into(row, &lp[i * cols..(i + 1) * cols], dn[i]);
            row[targets[i] as usize] -= dn[i];
        });
        d
    }

    fn log_softmax_rows_backward(&self, y: &Array2<f32>, dy: &Array2<f32>) -> Array2<f32> {
        let cols = y.ncols();
        let ys = slice(y);
        let mut dx = dy.clone();
        self.for_rows(&mut dx, |i, r| {
            let total: f32 = r.iter().sum();
            fastexp::sub_scaled_exp(r, &ys[i * cols..(i + 1) * cols], total);
        });
        dx
    }

    fn gather_rows(&self, x: &Array2<f32>, idx: &[u32]) -> Array2<f32> {
        let cols = x.ncols();
        let src = slice(x);
        self.rows_from(idx.len(), cols, |i, r| {
            let s = idx[i] as usize * cols;
            write_row(r, &src[s..s + cols])
        })
    }

    fn scatter_add_rows(&self, dst: &mut Array2<f32>, src: &Array2<f32>, idx: &[u32]) {
        let cols = dst.ncols();
        let (d, s) = (slice_mut(dst), slice(src));
        // Sequential in index order: repeated indices accumulate deterministically.
        for (i, &r) in idx.iter().enumerate() {
            let r = r as usize * cols;
            for (dv, &sv) in d[r..r + cols].iter_mut().zip(&s[i * cols..(i + 1) * cols]) {
                *dv += sv;
            }
        }
    }

    fn pick_cols(&self, x: &Array2<f32>, cols: &[u32]) -> Array2<f32> {
        let n = x.ncols();
        let data = slice(x);
        from_vec(
            [x.nrows(), 1],
            cols.iter()
                .enumerate()
                .map(|(i, &c)| data[i * n + c as usize])
                .collect(),
        )
    }

    fn add_at_cols(&self, dst: &mut Array2<f32>, cols: &[u32], values: &Array2<f32>) {
        let n = dst.ncols();
        let (d, v) = (slice_mut(dst), slice(values));
        for (i, &c) in cols.iter().enumerate() {
            d[i * n + c as usize] += v[i];
        }
    }

    fn copy_cols(
        &self,
        src: &Array2<f32>,
        src_col: usize,
        dst: &mut Array2<f32>,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        let sc = src.ncols();
        let s = slice(src);
        self.for_rows(dst, |i, r| {
            let from = &s[i * sc + src_col..i * sc + src_col + width];
            let to = &mut r[dst_col..dst_col + width];
            if accumulate {
                to.iter_mut().zip(from).for_each(|(t, f)| *t += f);
            } else {
                to.copy_from_slice(from);
            }
        });
    }

    fn axpy(&self, alpha: f32, x: &Array2<f32>, y: &mut Array2<f32>) {
        self.zip_map(slice_mut(y), [slice(x)], |y, [x]| {
            y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
        });
    }

    fn scale(&self, x: &mut Array2<f32>, alpha: f32) {
        self.zip_map(slice_mut(x), [], |x, []| {
            x.iter_mut().for_each(|v| *v *= alpha)
        });
    }

    fn im2col(&self, x: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let (src, in_len) = (slice(x), w.in_len());
        let mut out = Array2::zeros((x.nrows() * oh * ow, w.patch_len()));
        self.for_rows(&mut out, |row, r| {
            let (n, pix) = (row / (oh * ow), row % (oh * ow));
            let (oy, ox) = (pix / ow, pix % ow);
            let img = &src[n * in_len..(n + 1) * in_len];
            for ky in 0..w.kernel_h {
                for kx in 0..w.kernel_w {
                    if let Some(p) = w.source_pixel(oy, ox, ky, kx) {
                        let at = (ky * w.kernel_w + kx) * c;
                        r[at..at + c].copy_from_slice(&img[p * c..(p + 1) * c]);
                    }
                }
            }
        });
        out
    }

    fn col2im(&self, cols: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let n_img = cols.nrows() / (oh * ow);
        let (src, patch) = (slice(cols), w.patch_len());
        let mut x = Array2::zeros((n_img, w.in_len()));
        // One image per task: overlapping windows only collide within an image.
        self.for_rows(&mut x, |n, img| {
            for pix in 0..oh * ow {
                let (oy, ox) = (pix / ow, pix % ow);
                let r = &src[(n * oh * ow + pix) * patch..(n * oh * ow + pix + 1) * patch];
                for ky in 0..w.kernel_h {
                    for kx in 0..w.kernel_w {
                        if let Some(p) = w.source_pixel(oy, ox, ky, kx) {
                            let at = (ky * w.kernel_w + kx) * c;
                            img[p * c..(p + 1) * c]
                                .iter_mut()
                                .zip(&r[at..at + c])
                                .for_each(|(d, s)| *d += s);
                        }
                    }
                }
            }
        });
        x
    }

    fn max_pool2d(&self, x: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let (src, in_len) = (slice(x), w.in_len());
        let mut out = Array2::from_elem((x.nrows(), oh * ow * c), f32::NEG_INFINITY);
        self.for_rows(&mut out, |n, o| {
            let img = &src[n * in_len..(n + 1) * in_len];
            for pix in 0..oh * ow {
                let (oy, ox) = (pix / ow, pix % ow);
                let dst = &mut o[pix * c..(pix + 1) * c];
                for ky in 0..w.kernel_h {
                    for kx in 0..w.kernel_w {
                        let p = w.source_pixel(oy, ox, ky, kx).expect("no padding");
                        dst.iter_mut()
                            .zip(&img[p * c..(p + 1) * c])
                            .for_each(|(d, &s)| *d = d.max(s));
                    }
                }
            }
        });
        out
    }

    fn max_pool2d_backward(&self, x: &Array2<f32>, dy: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let (src, g, in_len) = (slice(x), slice(dy), w.in_len());
        let mut dx = Array2::zeros(x.dim());
        self.for_rows(&mut dx, |n, d| {
            let img = &src[n * in_len..(n + 1) * in_len];
            let gy = &g[n * oh * ow * c..(n + 1) * oh * ow * c];
            // Each pixel's window is searched for all channels at once, with selects instead
            // of branches: whether a value beats the best so far is data, and as a branch it
            // was mispredicted so often that this backward took a fifth of a conv net's
            // training step.
            let (mut best, mut at) = (vec![0.0f32; c], vec![0u32; c]);
            for pix in 0..oh * ow {
                let (oy, ox) = (pix / ow, pix % ow);
                for ky in 0..w.kernel_h {
                    for kx in 0..w.kernel_w {
                        let p = w.source_pixel(oy, ox, ky, kx).expect("no padding");
                        let values = &img[p * c..(p + 1) * c];
                        if ky == 0 && kx == 0 {
                            // The window's first input starts every channel, NaN included.
                            best.copy_from_slice(values);
                            at.fill(p as u32);
                            continue;
                        }
                        // Strictly greater: the first maximal input keeps the gradient.
                        for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(values) {
                            let take = v > *b;
                            *b = if take { v } else { *b };
                            *a = if take { p as u32 } else { *a };
                        }
                    }
                }
                for (ch, (&a, &dy)) in at.iter().zip(&gy[pix * c..(pix + 1) * c]).enumerate() {
                    d[a as usize * c + ch] += dy;
                }
            }
        });
        dx
    }

    fn adam_step(
        &self,
        param: &mut Array2<f32>,
        grad: &Array2<f32>,
        m: &mut Array2<f32>,
        v: &mut Array2<f32>,
        step: &AdamStep,
    ) {
        let (p, g, m, v) = (slice_mut(param), slice(grad), slice_mut(m), slice_mut(v));
        for i in 0..p.len() {
            (p[i], m[i], v[i]) = step.update(p[i], g[i], m[i], v[i]);
        }
    }

    fn sgd_step(
        &self,
        param: &mut Array2<f32>,
        grad: &Array2<f32>,
        velocity: &mut Array2<f32>,
        step: &SgdStep,
    ) {
        let (p, g, vel) = (slice_mut(param), slice(grad), slice_mut(velocity));
        for i in 0..p.len() {
            (p[i], vel[i]) = step.update(p[i], g[i], vel[i]);
        }
    }
}

/// The routed products read their inputs through the routing and write each output once
/// (see `cpu/grouped.rs`).
impl GroupedKernels for Cpu {
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        offsets: &[u32],
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        grouped::grouped_matmul(self, op, a, b, None, offsets, beta, c);
    }

    fn grouped_matmul_rows(
        &self,
        op: GroupedOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        rows: &[u32],
        offsets: &[u32],
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        grouped::grouped_matmul(self, op, a, b, Some(rows), offsets, beta, c);
    }

    fn grouped_product_rows(
        &self,
        op: GroupedOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        rows: &[u32],
        offsets: &[u32],
        bias: Option<&Array2<f32>>,
    ) -> Array2<f32> {
        grouped::grouped_product(self, op, a, b, rows, offsets, bias)
    }

    fn segment_sum_rows(&self, src: &Array2<f32>, pos: &[u32], ptr: &[u32]) -> Array2<f32> {
        grouped::segment_sum_rows(self, src, pos, ptr)
    }

    fn add_gathered_rows(&self, dst: &mut Array2<f32>, table: &Array2<f32>, idx: &[u32]) {
        grouped::add_gathered_rows(self, dst, table, idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_writes_every_row_on_one_and_two_threads() {
        for threads in [1, 2] {
            // Large enough for the parallel path on two threads.
            let (rows, cols) = (300, 200);
            let out = Cpu::with_threads(threads).rows_from(rows, cols, |i, r| {
                if i % 7 == 0 {
                    fill_row(r, -1.0)
                } else {
                    let src: Vec<f32> = (0..cols).map(|j| (i * cols + j) as f32).collect();
                    write_row(r, &src)
                }
            });
            for ((i, j), &v) in out.indexed_iter() {
                let want = if i % 7 == 0 {
                    -1.0
                } else {
                    (i * cols + j) as f32
                };
                assert_eq!(v, want, "row {i}, column {j}, {threads} threads");
            }
        }
    }

    #[test]
    #[should_panic(expected = "must return the whole row")]
    fn rows_from_refuses_a_partly_written_row() {
        Cpu::with_threads(1).rows_from(2, 4, |_, r| fill_row(&mut r[..3], 0.0));
    }
}
