//! [`Reference`]: a slow, obviously-correct backend that serves as the test oracle.
//!
//! Every operation is a plain loop over indices that reads like its mathematical definition.
//! Nothing here is optimised; fast backends are checked against it by [`crate::conformance`].

use crate::error::BackendError;
use crate::kernels::{GroupedKernels, Kernels};
use crate::matrix::Matrix;
use crate::ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d,
};

/// The reference backend: naive loops over host [`Matrix`] values. Its kernels see only
/// calls that [`crate::Backend`]'s checks accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn at(t: &Matrix, trans: Transpose, i: usize, j: usize) -> f32 {
    match trans {
        Transpose::No => t[[i, j]],
        Transpose::Yes => t[[j, i]],
    }
}

fn reduce(op: ReduceOp, values: impl Iterator<Item = f32>) -> f32 {
    let values: Vec<f32> = values.collect();
    match op {
        ReduceOp::Sum => values.iter().sum(),
        ReduceOp::Mean => values.iter().sum::<f32>() / values.len() as f32,
        ReduceOp::Max => values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    }
}

impl Kernels for Reference {
    type Tensor = Matrix;

    fn name(&self) -> String {
        "reference".into()
    }

    fn shape(&self, t: &Matrix) -> Shape {
        t.shape()
    }

    fn upload(&self, s: Shape, data: &[f32]) -> Matrix {
        Matrix::from_vec(s, data.to_vec())
    }

    fn download(&self, t: &Matrix) -> Result<Vec<f32>, BackendError> {
        Ok(t.as_slice().to_vec())
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn zeros(&self, s: Shape) -> Matrix {
        Matrix::zeros(s)
    }

    fn fill(&self, t: &mut Matrix, value: f32) {
        t.as_mut_slice().fill(value);
    }

    fn duplicate(&self, t: &Matrix) -> Matrix {
        t.clone()
    }

    fn reshape(&self, t: Matrix, s: Shape) -> Matrix {
        t.reshape(s)
    }

    fn matmul(
        &self,
        alpha: f32,
        a: &Matrix,
        ta: Transpose,
        b: &Matrix,
        tb: Transpose,
        beta: f32,
        c: &mut Matrix,
    ) {
        let [m, k] = ta.apply(a.shape());
        let n = tb.apply(b.shape())[1];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    acc += at(a, ta, i, p) as f64 * at(b, tb, p, j) as f64;
                }
                let old = if beta == 0.0 { 0.0 } else { beta * c[[i, j]] };
                c[[i, j]] = alpha * acc as f32 + old;
            }
        }
    }

    fn unary(&self, op: UnaryOp, x: &Matrix) -> Matrix {
        Matrix::from_fn(x.shape(), |i, j| op.apply(x[[i, j]]))
    }

    fn unary_backward(&self, op: UnaryOp, x: &Matrix, y: &Matrix, dy: &Matrix) -> Matrix {
        Matrix::from_fn(x.shape(), |i, j| {
            dy[[i, j]] * op.derivative(x[[i, j]], y[[i, j]])
        })
    }

    fn binary(&self, op: BinaryOp, a: &Matrix, b: &Matrix) -> Matrix {
        Matrix::from_fn(a.shape(), |i, j| op.apply(a[[i, j]], b[[i, j]]))
    }

    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Matrix,
        b: &Matrix,
        dy: &Matrix,
    ) -> (Matrix, Matrix) {
        let da = Matrix::from_fn(a.shape(), |i, j| {
            dy[[i, j]] * op.partials(a[[i, j]], b[[i, j]]).0
        });
        let db = Matrix::from_fn(a.shape(), |i, j| {
            dy[[i, j]] * op.partials(a[[i, j]], b[[i, j]]).1
        });
        (da, db)
    }

    fn add_row(&self, x: &mut Matrix, row: &Matrix) {
        for i in 0..x.rows() {
            for j in 0..x.cols() {
                x[[i, j]] += row[[0, j]];
            }
        }
    }

    fn scale_rows(&self, x: &mut Matrix, s: &Matrix) {
        for i in 0..x.rows() {
            for j in 0..x.cols() {
                x[[i, j]] *= s[[i, 0]];
            }
        }
    }

    fn row_dot(&self, a: &Matrix, b: &Matrix) -> Matrix {
        Matrix::from_fn([a.rows(), 1], |i, _| {
            (0..a.cols()).map(|j| a[[i, j]] * b[[i, j]]).sum()
        })
    }

    fn reduce_rows(&self, op: ReduceOp, x: &Matrix) -> Matrix {
        Matrix::from_fn([x.rows(), 1], |i, _| {
            reduce(op, (0..x.cols()).map(|j| x[[i, j]]))
        })
    }

    fn reduce_cols(&self, op: ReduceOp, x: &Matrix) -> Matrix {
        Matrix::from_fn([1, x.cols()], |_, j| {
            reduce(op, (0..x.rows()).map(|i| x[[i, j]]))
        })
    }

    fn log_softmax_rows(&self, x: &Matrix) -> Matrix {
        let mut y = x.clone();
        for i in 0..x.rows() {
            let max = reduce(ReduceOp::Max, (0..x.cols()).map(|j| x[[i, j]]));
            let sum: f64 = (0..x.cols())
                .map(|j| ((x[[i, j]] - max) as f64).exp())
                .sum();
            let lse = max + sum.ln() as f32;
            for j in 0..x.cols() {
                y[[i, j]] = x[[i, j]] - lse;
            }
        }
        y
    }

    fn log_softmax_rows_backward(&self, y: &Matrix, dy: &Matrix) -> Matrix {
        let mut dx = dy.clone();
        for i in 0..y.rows() {
            let total: f32 = (0..y.cols()).map(|j| dy[[i, j]]).sum();
            for j in 0..y.cols() {
                dx[[i, j]] = dy[[i, j]] - y[[i, j]].exp() * total;
            }
        }
        dx
    }

    fn gather_rows(&self, x: &Matrix, idx: &[u32]) -> Matrix {
        Matrix::from_fn([idx.len(), x.cols()], |i, j| x[[idx[i] as usize, j]])
    }

    fn scatter_add_rows(&self, dst: &mut Matrix, src: &Matrix, idx: &[u32]) {
        for (i, &r) in idx.iter().enumerate() {
            for j in 0..src.cols() {
                dst[[r as usize, j]] += src[[i, j]];
            }
        }
    }

    fn pick_cols(&self, x: &Matrix, cols: &[u32]) -> Matrix {
        Matrix::from_fn([x.rows(), 1], |i, _| x[[i, cols[i] as usize]])
    }

    fn add_at_cols(&self, dst: &mut Matrix, cols: &[u32], values: &Matrix) {
        for (i, &c) in cols.iter().enumerate() {
            dst[[i, c as usize]] += values[[i, 0]];
        }
    }

    fn copy_cols(
        &self,
        src: &Matrix,
        src_col: usize,
        dst: &mut Matrix,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        for i in 0..src.rows() {
            for j in 0..width {
                let v = src[[i, src_col + j]];
                if accumulate {
                    dst[[i, dst_col + j]] += v;
                } else {
                    dst[[i, dst_col + j]] = v;
                }
            }
        }
    }

    fn axpy(&self, alpha: f32, x: &Matrix, y: &mut Matrix) {
        for (yv, xv) in y.as_mut_slice().iter_mut().zip(x.as_slice()) {
            *yv += alpha * xv;
        }
    }

    fn scale(&self, x: &mut Matrix, alpha: f32) {
        x.as_mut_slice().iter_mut().for_each(|v| *v *= alpha);
    }

    fn im2col(&self, x: &Matrix, w: &Window2d) -> Matrix {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let mut out = Matrix::zeros([x.rows() * oh * ow, w.patch_len()]);
        for n in 0..x.rows() {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = (n * oh + oy) * ow + ox;
                    for ky in 0..w.kernel_h {
                        for kx in 0..w.kernel_w {
                            if let Some(pix) = w.source_pixel(oy, ox, ky, kx) {
                                for ch in 0..c {
                                    out[[row, (ky * w.kernel_w + kx) * c + ch]] =
                                        x[[n, pix * c + ch]];
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn col2im(&self, cols: &Matrix, w: &Window2d) -> Matrix {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let n_img = cols.rows() / (oh * ow);
        let mut x = Matrix::zeros([n_img, w.in_len()]);
        for n in 0..n_img {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = (n * oh + oy) * ow + ox;
                    for ky in 0..w.kernel_h {
                        for kx in 0..w.kernel_w {
                            if let Some(pix) = w.source_pixel(oy, ox, ky, kx) {
                                for ch in 0..c {
                                    x[[n, pix * c + ch]] +=
                                        cols[[row, (ky * w.kernel_w + kx) * c + ch]];
                                }
                            }
                        }
                    }
                }
            }
        }
        x
    }

    fn max_pool2d(&self, x: &Matrix, w: &Window2d) -> Matrix {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        Matrix::from_fn([x.rows(), oh * ow * c], |n, j| {
            let (pix, ch) = (j / c, j % c);
            let (oy, ox) = (pix / ow, pix % ow);
            let mut best = f32::NEG_INFINITY;
            for ky in 0..w.kernel_h {
                for kx in 0..w.kernel_w {
                    let p = w.source_pixel(oy, ox, ky, kx).expect("no padding");
                    best = best.max(x[[n, p * c + ch]]);
                }
            }
            best
        })
    }

    fn max_pool2d_backward(&self, x: &Matrix, dy: &Matrix, w: &Window2d) -> Matrix {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let mut dx = Matrix::zeros(x.shape());
        for n in 0..x.rows() {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut best = (f32::NEG_INFINITY, usize::MAX);
                        for ky in 0..w.kernel_h {
                            for kx in 0..w.kernel_w {
                                let p = w.source_pixel(oy, ox, ky, kx).expect("no padding");
                                let v = x[[n, p * c + ch]];
                                if v > best.0 || best.1 == usize::MAX {
                                    best = (v, p);
                                }
                            }
                        }
                        dx[[n, best.1 * c + ch]] += dy[[n, (oy * ow + ox) * c + ch]];
                    }
                }
            }
        }
        dx
    }

    fn adam_step(
        &self,
        param: &mut Matrix,
        grad: &Matrix,
        m: &mut Matrix,
        v: &mut Matrix,
        step: &AdamStep,
    ) {
        for i in 0..param.rows() * param.cols() {
            let idx = [i / param.cols(), i % param.cols()];
            let (p, mm, vv) = step.update(param[idx], grad[idx], m[idx], v[idx]);
            param[idx] = p;
            m[idx] = mm;
            v[idx] = vv;
        }
    }

    fn sgd_step(&self, param: &mut Matrix, grad: &Matrix, velocity: &mut Matrix, step: &SgdStep) {
        for i in 0..param.rows() * param.cols() {
            let idx = [i / param.cols(), i % param.cols()];
            let (p, vel) = step.update(param[idx], grad[idx], velocity[idx]);
            param[idx] = p;
            velocity[idx] = vel;
        }
    }
}

/// The reference overrides every grouped kernel with plain loops: it is the oracle the
/// default bodies are checked against.
impl GroupedKernels for Reference {
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Matrix,
        b: &Matrix,
        offsets: &[u32],
        beta: f32,
        c: &mut Matrix,
    ) {
        let g = offsets.len() - 1;
        let (d_in, d_out) = op.block_dims(b.shape(), c.shape(), g);
        let scaled = |old: f32| if beta == 0.0 { 0.0 } else { beta * old };
        for grp in 0..g {
            let rows = offsets[grp] as usize..offsets[grp + 1] as usize;
            match op {
                GroupedOp::XW | GroupedOp::XWt => {
                    let (width, inner) = if op == GroupedOp::XW {
                        (d_out, d_in)
                    } else {
                        (d_in, d_out)
                    };
                    for r in rows {
                        for j in 0..width {
                            let mut acc = 0.0f64;
                            for p in 0..inner {
                                let w = if op == GroupedOp::XW {
                                    b[[grp * d_in + p, j]]
                                } else {
                                    b[[grp * d_in + j, p]]
                                };
                                acc += a[[r, p]] as f64 * w as f64;
                            }
                            c[[r, j]] = acc as f32 + scaled(c[[r, j]]);
                        }
                    }
                }
                GroupedOp::XtY => {
                    for i in 0..d_in {
                        for j in 0..d_out {
                            let acc: f64 = rows
                                .clone()
                                .map(|r| a[[r, i]] as f64 * b[[r, j]] as f64)
                                .sum();
                            c[[grp * d_in + i, j]] = acc as f32 + scaled(c[[grp * d_in + i, j]]);
                        }
                    }
                }
            }
        }
    }

    fn segment_sum_rows(&self, src: &Matrix, pos: &[u32], ptr: &[u32]) -> Matrix {
        let n = ptr.len() - 1;
        let mut out = Matrix::zeros([n, src.cols()]);
        for i in 0..n {
            for &p in &pos[ptr[i] as usize..ptr[i + 1] as usize] {
                for j in 0..src.cols() {
                    out[[i, j]] += src[[p as usize, j]];
                }
            }
        }
        out
    }

    fn add_gathered_rows(&self, dst: &mut Matrix, table: &Matrix, idx: &[u32]) {
        for (i, &t) in idx.iter().enumerate() {
            for j in 0..dst.cols() {
                dst[[i, j]] += table[[t as usize, j]];
            }
        }
    }
}
