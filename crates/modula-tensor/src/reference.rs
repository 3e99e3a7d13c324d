//! [`Reference`]: a slow, obviously-correct backend that serves as the test oracle.
//!
//! Every operation is a plain loop over indices that reads like its mathematical definition.
//! Nothing here is optimised; fast backends are checked against it by [`crate::conformance`].

use ndarray::Array2;

use crate::backend::{Backend, Shape};
use crate::check;
use crate::error::BackendError;
use crate::ops::{AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Transpose, UnaryOp, Window2d};

/// The reference backend: naive loops over `ndarray` matrices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn at(t: &Array2<f32>, trans: Transpose, i: usize, j: usize) -> f32 {
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

fn shape(t: &Array2<f32>) -> Shape {
    [t.nrows(), t.ncols()]
}

impl Backend for Reference {
    type Tensor = Array2<f32>;

    fn name(&self) -> String {
        "reference".into()
    }

    fn shape(&self, t: &Array2<f32>) -> Shape {
        shape(t)
    }

    #[track_caller]
    fn upload(&self, s: Shape, data: &[f32]) -> Array2<f32> {
        check::data_len(s, data.len());
        Array2::from_shape_vec((s[0], s[1]), data.to_vec()).expect("length checked")
    }

    fn download(&self, t: &Array2<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(t.iter().copied().collect())
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn zeros(&self, s: Shape) -> Array2<f32> {
        Array2::zeros((s[0], s[1]))
    }

    fn fill(&self, t: &mut Array2<f32>, value: f32) {
        t.fill(value);
    }

    fn duplicate(&self, t: &Array2<f32>) -> Array2<f32> {
        t.clone()
    }

    #[track_caller]
    fn reshape(&self, t: Array2<f32>, s: Shape) -> Array2<f32> {
        check::data_len(s, t.len());
        let data: Vec<f32> = t.iter().copied().collect();
        Array2::from_shape_vec((s[0], s[1]), data).expect("length checked")
    }

    #[track_caller]
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
        let (m, k, n) = check::matmul(shape(a), ta, shape(b), tb, shape(c));
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

    fn unary(&self, op: UnaryOp, x: &Array2<f32>) -> Array2<f32> {
        x.mapv(|v| op.apply(v))
    }

    #[track_caller]
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Array2<f32>,
        y: &Array2<f32>,
        dy: &Array2<f32>,
    ) -> Array2<f32> {
        check::same_shape("unary_backward", shape(x), shape(y));
        check::same_shape("unary_backward", shape(x), shape(dy));
        Array2::from_shape_fn(x.dim(), |(i, j)| {
            dy[[i, j]] * op.derivative(x[[i, j]], y[[i, j]])
        })
    }

    #[track_caller]
    fn binary(&self, op: BinaryOp, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        check::same_shape("binary", shape(a), shape(b));
        Array2::from_shape_fn(a.dim(), |(i, j)| op.apply(a[[i, j]], b[[i, j]]))
    }

    #[track_caller]
    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        dy: &Array2<f32>,
    ) -> (Array2<f32>, Array2<f32>) {
        check::same_shape("binary_backward", shape(a), shape(b));
        check::same_shape("binary_backward", shape(a), shape(dy));
        let da = Array2::from_shape_fn(a.dim(), |(i, j)| {
            dy[[i, j]] * op.partials(a[[i, j]], b[[i, j]]).0
        });
        let db = Array2::from_shape_fn(a.dim(), |(i, j)| {
            dy[[i, j]] * op.partials(a[[i, j]], b[[i, j]]).1
        });
        (da, db)
    }

    #[track_caller]
    fn add_row(&self, x: &mut Array2<f32>, row: &Array2<f32>) {
        check::same_shape("add_row", [1, x.ncols()], shape(row));
        for i in 0..x.nrows() {
            for j in 0..x.ncols() {
                x[[i, j]] += row[[0, j]];
            }
        }
    }

    #[track_caller]
    fn scale_rows(&self, x: &mut Array2<f32>, s: &Array2<f32>) {
        check::same_shape("scale_rows", [x.nrows(), 1], shape(s));
        for i in 0..x.nrows() {
            for j in 0..x.ncols() {
                x[[i, j]] *= s[[i, 0]];
            }
        }
    }

    #[track_caller]
    fn row_dot(&self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        check::same_shape("row_dot", shape(a), shape(b));
        Array2::from_shape_fn((a.nrows(), 1), |(i, _)| {
            (0..a.ncols()).map(|j| a[[i, j]] * b[[i, j]]).sum()
        })
    }

    fn reduce_rows(&self, op: ReduceOp, x: &Array2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((x.nrows(), 1), |(i, _)| {
            reduce(op, (0..x.ncols()).map(|j| x[[i, j]]))
        })
    }

    fn reduce_cols(&self, op: ReduceOp, x: &Array2<f32>) -> Array2<f32> {
        Array2::from_shape_fn((1, x.ncols()), |(_, j)| {
            reduce(op, (0..x.nrows()).map(|i| x[[i, j]]))
        })
    }

    fn log_softmax_rows(&self, x: &Array2<f32>) -> Array2<f32> {
        let mut y = x.clone();
        for i in 0..x.nrows() {
            let max = reduce(ReduceOp::Max, (0..x.ncols()).map(|j| x[[i, j]]));
            let sum: f64 = (0..x.ncols())
                .map(|j| ((x[[i, j]] - max) as f64).exp())
                .sum();
            let lse = max + sum.ln() as f32;
            for j in 0..x.ncols() {
                y[[i, j]] = x[[i, j]] - lse;
            }
        }
        y
    }

    #[track_caller]
    fn log_softmax_rows_backward(&self, y: &Array2<f32>, dy: &Array2<f32>) -> Array2<f32> {
        check::same_shape("log_softmax_rows_backward", shape(y), shape(dy));
        let mut dx = dy.clone();
        for i in 0..y.nrows() {
            let total: f32 = (0..y.ncols()).map(|j| dy[[i, j]]).sum();
            for j in 0..y.ncols() {
                dx[[i, j]] = dy[[i, j]] - y[[i, j]].exp() * total;
            }
        }
        dx
    }

    #[track_caller]
    fn gather_rows(&self, x: &Array2<f32>, idx: &[u32]) -> Array2<f32> {
        check::indices("gather_rows", idx, x.nrows());
        Array2::from_shape_fn((idx.len(), x.ncols()), |(i, j)| x[[idx[i] as usize, j]])
    }

    #[track_caller]
    fn scatter_add_rows(&self, dst: &mut Array2<f32>, src: &Array2<f32>, idx: &[u32]) {
        check::same_shape("scatter_add_rows", [idx.len(), dst.ncols()], shape(src));
        check::indices("scatter_add_rows", idx, dst.nrows());
        for (i, &r) in idx.iter().enumerate() {
            for j in 0..src.ncols() {
                dst[[r as usize, j]] += src[[i, j]];
            }
        }
    }

    #[track_caller]
    fn pick_cols(&self, x: &Array2<f32>, cols: &[u32]) -> Array2<f32> {
        assert_eq!(cols.len(), x.nrows(), "pick_cols: one column per row");
        check::indices("pick_cols", cols, x.ncols());
        Array2::from_shape_fn((x.nrows(), 1), |(i, _)| x[[i, cols[i] as usize]])
    }

    #[track_caller]
    fn add_at_cols(&self, dst: &mut Array2<f32>, cols: &[u32], values: &Array2<f32>) {
        assert_eq!(cols.len(), dst.nrows(), "add_at_cols: one column per row");
        check::same_shape("add_at_cols", [dst.nrows(), 1], shape(values));
        check::indices("add_at_cols", cols, dst.ncols());
        for (i, &c) in cols.iter().enumerate() {
            dst[[i, c as usize]] += values[[i, 0]];
        }
    }

    #[track_caller]
    fn copy_cols(
        &self,
        src: &Array2<f32>,
        src_col: usize,
        dst: &mut Array2<f32>,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        assert_eq!(src.nrows(), dst.nrows(), "copy_cols: row counts differ");
        check::col_range("copy_cols", src_col, width, src.ncols());
        check::col_range("copy_cols", dst_col, width, dst.ncols());
        for i in 0..src.nrows() {
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

    #[track_caller]
    fn axpy(&self, alpha: f32, x: &Array2<f32>, y: &mut Array2<f32>) {
        check::same_shape("axpy", shape(x), shape(y));
        for (yv, xv) in y.iter_mut().zip(x.iter()) {
            *yv += alpha * xv;
        }
    }

    fn scale(&self, x: &mut Array2<f32>, alpha: f32) {
        x.mapv_inplace(|v| v * alpha);
    }

    #[track_caller]
    fn im2col(&self, x: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        check::same_shape("im2col", [x.nrows(), w.in_len()], shape(x));
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        let mut out = Array2::zeros((x.nrows() * oh * ow, w.patch_len()));
        for n in 0..x.nrows() {
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

    #[track_caller]
    fn col2im(&self, cols: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        assert!(
            cols.ncols() == w.patch_len() && cols.nrows().is_multiple_of(oh * ow),
            "col2im: patches {:?} do not match window {w:?}",
            shape(cols)
        );
        let n_img = cols.nrows() / (oh * ow);
        let mut x = Array2::zeros((n_img, w.in_len()));
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

    #[track_caller]
    fn max_pool2d(&self, x: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        check::same_shape("max_pool2d", [x.nrows(), w.in_len()], shape(x));
        assert_eq!(w.padding, 0, "max_pool2d: padding is not supported");
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        Array2::from_shape_fn((x.nrows(), oh * ow * c), |(n, j)| {
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

    #[track_caller]
    fn max_pool2d_backward(&self, x: &Array2<f32>, dy: &Array2<f32>, w: &Window2d) -> Array2<f32> {
        check::same_shape("max_pool2d_backward", [x.nrows(), w.in_len()], shape(x));
        let (oh, ow, c) = (w.out_height(), w.out_width(), w.channels);
        check::same_shape("max_pool2d_backward", [x.nrows(), oh * ow * c], shape(dy));
        let mut dx = Array2::zeros(x.dim());
        for n in 0..x.nrows() {
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

    #[track_caller]
    fn adam_step(
        &self,
        param: &mut Array2<f32>,
        grad: &Array2<f32>,
        m: &mut Array2<f32>,
        v: &mut Array2<f32>,
        step: &AdamStep,
    ) {
        check::same_shape("adam_step", shape(param), shape(grad));
        check::same_shape("adam_step", shape(param), shape(m));
        check::same_shape("adam_step", shape(param), shape(v));
        for i in 0..param.len() {
            let idx = (i / param.ncols(), i % param.ncols());
            let (p, mm, vv) = step.update(param[idx], grad[idx], m[idx], v[idx]);
            param[idx] = p;
            m[idx] = mm;
            v[idx] = vv;
        }
    }

    #[track_caller]
    fn sgd_step(
        &self,
        param: &mut Array2<f32>,
        grad: &Array2<f32>,
        velocity: &mut Array2<f32>,
        step: &SgdStep,
    ) {
        check::same_shape("sgd_step", shape(param), shape(grad));
        check::same_shape("sgd_step", shape(param), shape(velocity));
        for i in 0..param.len() {
            let idx = (i / param.ncols(), i % param.ncols());
            let (p, vel) = step.update(param[idx], grad[idx], velocity[idx]);
            param[idx] = p;
            velocity[idx] = vel;
        }
    }

    #[track_caller]
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &Array2<f32>,
        b: &Array2<f32>,
        offsets: &[u32],
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        let (g, d_in, d_out) = check::grouped(op, shape(a), shape(b), offsets, shape(c));
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

    #[track_caller]
    fn segment_sum_rows(&self, src: &Array2<f32>, pos: &[u32], ptr: &[u32]) -> Array2<f32> {
        let n = check::offsets("segment_sum_rows", ptr, pos.len());
        check::indices("segment_sum_rows", pos, src.nrows());
        let mut out = Array2::zeros((n, src.ncols()));
        for i in 0..n {
            for &p in &pos[ptr[i] as usize..ptr[i + 1] as usize] {
                for j in 0..src.ncols() {
                    out[[i, j]] += src[[p as usize, j]];
                }
            }
        }
        out
    }

    #[track_caller]
    fn add_gathered_rows(&self, dst: &mut Array2<f32>, table: &Array2<f32>, idx: &[u32]) {
        assert_eq!(
            idx.len(),
            dst.nrows(),
            "add_gathered_rows: one index per row"
        );
        assert_eq!(
            table.ncols(),
            dst.ncols(),
            "add_gathered_rows: column counts differ"
        );
        check::indices("add_gathered_rows", idx, table.nrows());
        for (i, &t) in idx.iter().enumerate() {
            for j in 0..dst.ncols() {
                dst[[i, j]] += table[[t as usize, j]];
            }
        }
    }
}
