//! A conformance suite generic over [`Backend`]: every backend runs the same checks against
//! the [`Reference`] oracle on seeded random inputs (feature `conformance`).
//!
//! [`CoreOnly`] wraps a backend and hides its grouped kernels, so that the suite also runs
//! the default bodies of [`GroupedKernels`](crate::GroupedKernels) on that backend's core operations.
//!
//! ```
//! use modula_tensor::{conformance, Reference};
//! let tol = conformance::Tolerance::default();
//! // The grouped products through their default bodies, on the reference's core kernels.
//! let failures = conformance::run_all(&conformance::CoreOnly(Reference), &tol);
//! assert!(failures.is_empty(), "{failures:#?}");
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The core-only wrapper.
mod core_only;

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::backend::Backend;
use crate::matrix::Matrix;
use crate::ops::{
    AdamStep, BinaryOp, GroupedOp, ReduceOp, SgdStep, Shape, Transpose, UnaryOp, Window2d,
};
use crate::reference::Reference;

pub use core_only::CoreOnly;

/// Allowed deviation from the reference: `|got - want| <= abs + rel * |want|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f32,
    /// Relative part.
    pub rel: f32,
}

impl Default for Tolerance {
    /// Tight enough to catch indexing bugs, loose enough for reordered f32 sums.
    fn default() -> Self {
        Tolerance {
            abs: 1e-4,
            rel: 1e-4,
        }
    }
}

/// One named check of the suite.
pub struct Check<B: Backend> {
    /// The operation family under test.
    pub name: &'static str,
    /// Runs the check; `Err` describes the first mismatch.
    pub run: fn(&B, &Tolerance) -> Result<(), String>,
}

/// Every check of the suite.
pub fn checks<B: Backend>() -> Vec<Check<B>> {
    vec![
        Check {
            name: "upload_download",
            run: upload_download::<B>,
        },
        Check {
            name: "matmul",
            run: matmul::<B>,
        },
        Check {
            name: "unary",
            run: unary::<B>,
        },
        Check {
            name: "binary",
            run: binary::<B>,
        },
        Check {
            name: "broadcast",
            run: broadcast::<B>,
        },
        Check {
            name: "reduce",
            run: reduce::<B>,
        },
        Check {
            name: "log_softmax",
            run: log_softmax::<B>,
        },
        Check {
            name: "indexing",
            run: indexing::<B>,
        },
        Check {
            name: "copy_cols",
            run: copy_cols::<B>,
        },
        Check {
            name: "axpy_scale_fill",
            run: axpy_scale_fill::<B>,
        },
        Check {
            name: "conv_windows",
            run: conv_windows::<B>,
        },
        Check {
            name: "optimisers",
            run: optimisers::<B>,
        },
        Check {
            name: "grouped",
            run: grouped::<B>,
        },
        Check {
            name: "misuse",
            run: misuse::<B>,
        },
    ]
}

/// Runs every check and returns the failures as `(name, message)`; empty means conformant.
pub fn run_all<B: Backend>(backend: &B, tol: &Tolerance) -> Vec<(&'static str, String)> {
    checks::<B>()
        .into_iter()
        .filter_map(|c| (c.run)(backend, tol).err().map(|e| (c.name, e)))
        .collect()
}

/// Random values in `[-1, 1)`.
fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// A pair of the same random tensor on the backend under test and on the reference.
struct Pair<B: Backend> {
    got: B::Tensor,
    want: Matrix,
}

fn pair<B: Backend>(b: &B, shape: Shape, data: &[f32]) -> Pair<B> {
    Pair {
        got: b.upload(shape, data),
        want: Reference.upload(shape, data),
    }
}

fn random_pair<B: Backend>(b: &B, rng: &mut ChaCha8Rng, shape: Shape) -> Pair<B> {
    let data = values(rng, shape[0] * shape[1]);
    pair(b, shape, &data)
}

/// Compares a backend tensor with the reference result.
fn compare<B: Backend>(
    b: &B,
    what: &str,
    got: &B::Tensor,
    want: &Matrix,
    tol: &Tolerance,
) -> Result<(), String> {
    let shape = b.shape(got);
    if shape != want.shape() {
        return Err(format!(
            "{what}: shape {shape:?}, reference {:?}",
            want.shape()
        ));
    }
    let got = b
        .download(got)
        .map_err(|e| format!("{what}: download failed: {e}"))?;
    for (i, (g, w)) in got.iter().zip(want.as_slice()).enumerate() {
        let ok =
            (g - w).abs() <= tol.abs + tol.rel * w.abs() || (g.is_nan() && w.is_nan()) || g == w;
        if !ok {
            return Err(format!(
                "{what}: element {i} (row {}, col {}) is {g}, reference {w}",
                i / shape[1].max(1),
                i % shape[1].max(1)
            ));
        }
    }
    Ok(())
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn upload_download<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(1);
    for shape in [[0, 3], [1, 1], [3, 0], [7, 5], [64, 33]] {
        let p = random_pair(b, &mut r, shape);
        compare(b, &format!("upload {shape:?}"), &p.got, &p.want, tol)?;
        compare(b, "duplicate", &b.duplicate(&p.got), &p.want, tol)?;
        let flat = [1, shape[0] * shape[1]];
        compare(
            b,
            "reshape",
            &b.reshape(b.duplicate(&p.got), flat),
            &Reference.reshape(p.want, flat),
            tol,
        )?;
    }
    compare(b, "zeros", &b.zeros([3, 4]), &Reference.zeros([3, 4]), tol)
}

fn matmul<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(2);
    // Odd shapes, degenerate ones and sizes that cross typical kernel block edges.
    let dims = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 1, 9),
        (1, 33, 2),
        (65, 31, 47),
        (130, 70, 129),
        (4, 0, 3),
    ];
    let tol = Tolerance {
        abs: tol.abs * 10.0,
        rel: tol.rel * 10.0,
    };
    for &(m, k, n) in &dims {
        for ta in [Transpose::No, Transpose::Yes] {
            for tb in [Transpose::No, Transpose::Yes] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                    let a = random_pair(b, &mut r, ta.apply([m, k]));
                    let bm = random_pair(b, &mut r, tb.apply([k, n]));
                    let mut c = random_pair(b, &mut r, [m, n]);
                    if beta == 0.0 {
                        // beta = 0 must ignore C entirely, NaN included.
                        b.fill(&mut c.got, f32::NAN);
                    }
                    b.matmul(alpha, &a.got, ta, &bm.got, tb, beta, &mut c.got);
                    Reference.matmul(alpha, &a.want, ta, &bm.want, tb, beta, &mut c.want);
                    let what =
                        format!("matmul m={m} k={k} n={n} {ta:?}/{tb:?} alpha={alpha} beta={beta}");
                    compare(b, &what, &c.got, &c.want, &tol)?;
                }
            }
        }
    }
    Ok(())
}

fn unary<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(3);
    for op in UnaryOp::ALL {
        let shape = [9, 13];
        let mut data = values(&mut r, shape[0] * shape[1]);
        if matches!(op, UnaryOp::Log | UnaryOp::Sqrt) {
            data.iter_mut().for_each(|v| *v = v.abs() + 0.1);
        } else {
            data.iter_mut().for_each(|v| *v *= 4.0);
        }
        let x = pair(b, shape, &data);
        let y = Pair::<B> {
            got: b.unary(op, &x.got),
            want: Reference.unary(op, &x.want),
        };
        compare(b, &format!("unary {op:?}"), &y.got, &y.want, tol)?;
        let dy = random_pair(b, &mut r, shape);
        let dx = b.unary_backward(op, &x.got, &y.got, &dy.got);
        let want = Reference.unary_backward(op, &x.want, &y.want, &dy.want);
        compare(b, &format!("unary_backward {op:?}"), &dx, &want, tol)?;
    }
    Ok(())
}

fn binary<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(4);
    for op in BinaryOp::ALL {
        let shape = [11, 6];
        let x = random_pair(b, &mut r, shape);
        let mut yd = values(&mut r, shape[0] * shape[1]);
        if op == BinaryOp::Div {
            yd.iter_mut()
                .for_each(|v| *v = v.signum() * (v.abs() + 0.5));
        }
        let y = pair(b, shape, &yd);
        compare(
            b,
            &format!("binary {op:?}"),
            &b.binary(op, &x.got, &y.got),
            &Reference.binary(op, &x.want, &y.want),
            tol,
        )?;
        let dy = random_pair(b, &mut r, shape);
        let (da, db) = b.binary_backward(op, &x.got, &y.got, &dy.got);
        let (wa, wb) = Reference.binary_backward(op, &x.want, &y.want, &dy.want);
        compare(b, &format!("binary_backward {op:?} da"), &da, &wa, tol)?;
        compare(b, &format!("binary_backward {op:?} db"), &db, &wb, tol)?;
    }
    Ok(())
}

fn broadcast<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(5);
    for shape in [[1, 1], [7, 3], [300, 129]] {
        let mut x = random_pair(b, &mut r, shape);
        let row = random_pair(b, &mut r, [1, shape[1]]);
        b.add_row(&mut x.got, &row.got);
        Reference.add_row(&mut x.want, &row.want);
        compare(b, "add_row", &x.got, &x.want, tol)?;
        let s = random_pair(b, &mut r, [shape[0], 1]);
        b.scale_rows(&mut x.got, &s.got);
        Reference.scale_rows(&mut x.want, &s.want);
        compare(b, "scale_rows", &x.got, &x.want, tol)?;
        let y = random_pair(b, &mut r, shape);
        compare(
            b,
            "row_dot",
            &b.row_dot(&x.got, &y.got),
            &Reference.row_dot(&x.want, &y.want),
            tol,
        )?;
    }
    Ok(())
}

fn reduce<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(6);
    for shape in [[1, 1], [5, 8], [257, 31]] {
        let x = random_pair(b, &mut r, shape);
        for op in ReduceOp::ALL {
            compare(
                b,
                &format!("reduce_rows {op:?}"),
                &b.reduce_rows(op, &x.got),
                &Reference.reduce_rows(op, &x.want),
                tol,
            )?;
            compare(
                b,
                &format!("reduce_cols {op:?}"),
                &b.reduce_cols(op, &x.got),
                &Reference.reduce_cols(op, &x.want),
                tol,
            )?;
        }
    }
    Ok(())
}

fn log_softmax<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(7);
    for (shape, scale) in [([1, 1], 1.0), ([6, 10], 5.0), ([33, 1000], 30.0)] {
        let data: Vec<f32> = values(&mut r, shape[0] * shape[1])
            .iter()
            .map(|v| v * scale)
            .collect();
        let x = pair(b, shape, &data);
        let y = Pair::<B> {
            got: b.log_softmax_rows(&x.got),
            want: Reference.log_softmax_rows(&x.want),
        };
        compare(b, "log_softmax_rows", &y.got, &y.want, tol)?;
        let dy = random_pair(b, &mut r, shape);
        let dx = b.log_softmax_rows_backward(&y.got, &dy.got);
        compare(
            b,
            "log_softmax_rows_backward",
            &dx,
            &Reference.log_softmax_rows_backward(&y.want, &dy.want),
            tol,
        )?;
        let owned = b.log_softmax_rows_owned(b.duplicate(&x.got));
        compare(b, "log_softmax_rows_owned", &owned, &y.want, tol)?;
        // The cross-entropy gradient, against its definition on the oracle:
        // exp(log_probs) * d_nll, minus d_nll at each row's target.
        let targets: Vec<u32> = (0..shape[0]).map(|i| ((i * 7) % shape[1]) as u32).collect();
        let d_nll = random_pair(b, &mut r, [shape[0], 1]);
        let mut want = Reference.unary(UnaryOp::Exp, &y.want);
        Reference.scale_rows(&mut want, &d_nll.want);
        let mut neg = d_nll.want.clone();
        Reference.scale(&mut neg, -1.0);
        Reference.add_at_cols(&mut want, &targets, &neg);
        let got = b.cross_entropy_backward(&y.got, &targets, &d_nll.got);
        compare(b, "cross_entropy_backward", &got, &want, tol)?;
    }
    Ok(())
}

fn indexing<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(8);
    let x = random_pair(b, &mut r, [10, 7]);
    // Repeated and unordered indices, and an empty list.
    for idx in [vec![], vec![3], vec![9, 0, 3, 3, 5, 9, 9, 1]] {
        compare(
            b,
            "gather_rows",
            &b.gather_rows(&x.got, &idx),
            &Reference.gather_rows(&x.want, &idx),
            tol,
        )?;
        let src = random_pair(b, &mut r, [idx.len(), 7]);
        let mut dst = random_pair(b, &mut r, [10, 7]);
        b.scatter_add_rows(&mut dst.got, &src.got, &idx);
        Reference.scatter_add_rows(&mut dst.want, &src.want, &idx);
        compare(b, "scatter_add_rows", &dst.got, &dst.want, tol)?;
    }
    let cols: Vec<u32> = (0..10).map(|_| r.random_range(0..7)).collect();
    compare(
        b,
        "pick_cols",
        &b.pick_cols(&x.got, &cols),
        &Reference.pick_cols(&x.want, &cols),
        tol,
    )?;
    let v = random_pair(b, &mut r, [10, 1]);
    let mut dst = random_pair(b, &mut r, [10, 7]);
    b.add_at_cols(&mut dst.got, &cols, &v.got);
    Reference.add_at_cols(&mut dst.want, &cols, &v.want);
    compare(b, "add_at_cols", &dst.got, &dst.want, tol)
}

fn copy_cols<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(9);
    for accumulate in [false, true] {
        let src = random_pair(b, &mut r, [6, 9]);
        let mut dst = random_pair(b, &mut r, [6, 5]);
        b.copy_cols(&src.got, 4, &mut dst.got, 1, 3, accumulate);
        Reference.copy_cols(&src.want, 4, &mut dst.want, 1, 3, accumulate);
        compare(
            b,
            &format!("copy_cols accumulate={accumulate}"),
            &dst.got,
            &dst.want,
            tol,
        )?;
    }
    Ok(())
}

fn axpy_scale_fill<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(10);
    // Large enough to take a parallel path where a backend has one.
    for shape in [[3, 3], [300, 500]] {
        let x = random_pair(b, &mut r, shape);
        let mut y = random_pair(b, &mut r, shape);
        b.axpy(-0.75, &x.got, &mut y.got);
        Reference.axpy(-0.75, &x.want, &mut y.want);
        compare(b, "axpy", &y.got, &y.want, tol)?;
        b.scale(&mut y.got, 1.5);
        Reference.scale(&mut y.want, 1.5);
        compare(b, "scale", &y.got, &y.want, tol)?;
        b.fill(&mut y.got, 2.5);
        Reference.fill(&mut y.want, 2.5);
        compare(b, "fill", &y.got, &y.want, tol)?;
    }
    Ok(())
}

fn conv_windows<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(11);
    let windows = [
        Window2d {
            height: 5,
            width: 6,
            channels: 2,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
        },
        Window2d {
            height: 7,
            width: 5,
            channels: 3,
            kernel_h: 3,
            kernel_w: 2,
            stride: 2,
            padding: 2,
        },
        Window2d {
            height: 4,
            width: 4,
            channels: 1,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
            padding: 0,
        },
    ];
    for w in &windows {
        let x = random_pair(b, &mut r, [3, w.in_len()]);
        let cols = Pair::<B> {
            got: b.im2col(&x.got, w),
            want: Reference.im2col(&x.want, w),
        };
        compare(b, &format!("im2col {w:?}"), &cols.got, &cols.want, tol)?;
        let dc = random_pair(b, &mut r, cols.want.shape());
        compare(
            b,
            &format!("col2im {w:?}"),
            &b.col2im(&dc.got, w),
            &Reference.col2im(&dc.want, w),
            tol,
        )?;
    }
    let pools = [
        Window2d {
            height: 6,
            width: 4,
            channels: 3,
            kernel_h: 2,
            kernel_w: 2,
            stride: 2,
            padding: 0,
        },
        Window2d {
            height: 5,
            width: 5,
            channels: 2,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 0,
        },
    ];
    for w in &pools {
        let x = random_pair(b, &mut r, [2, w.in_len()]);
        let y = Pair::<B> {
            got: b.max_pool2d(&x.got, w),
            want: Reference.max_pool2d(&x.want, w),
        };
        compare(b, &format!("max_pool2d {w:?}"), &y.got, &y.want, tol)?;
        let dy = random_pair(b, &mut r, y.want.shape());
        let dx = b.max_pool2d_backward(&x.got, &dy.got, w);
        compare(
            b,
            &format!("max_pool2d_backward {w:?}"),
            &dx,
            &Reference.max_pool2d_backward(&x.want, &dy.want, w),
            tol,
        )?;
    }
    Ok(())
}

fn optimisers<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(12);
    let shape = [13, 17];
    let mut p = random_pair(b, &mut r, shape);
    let mut m = pair(b, shape, &vec![0.0; shape[0] * shape[1]]);
    let mut v = pair(b, shape, &vec![0.0; shape[0] * shape[1]]);
    for t in 1..=3 {
        let g = random_pair(b, &mut r, shape);
        let step = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            t,
        };
        b.adam_step(&mut p.got, &g.got, &mut m.got, &mut v.got, &step);
        Reference.adam_step(&mut p.want, &g.want, &mut m.want, &mut v.want, &step);
    }
    compare(b, "adam_step param", &p.got, &p.want, tol)?;
    compare(b, "adam_step m", &m.got, &m.want, tol)?;
    compare(b, "adam_step v", &v.got, &v.want, tol)?;
    let mut vel = pair(b, shape, &vec![0.0; shape[0] * shape[1]]);
    for _ in 0..3 {
        let g = random_pair(b, &mut r, shape);
        let step = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-3,
        };
        b.sgd_step(&mut p.got, &g.got, &mut vel.got, &step);
        Reference.sgd_step(&mut p.want, &g.want, &mut vel.want, &step);
    }
    compare(b, "sgd_step param", &p.got, &p.want, tol)?;
    compare(b, "sgd_step velocity", &vel.got, &vel.want, tol)
}

fn grouped<B: Backend>(b: &B, tol: &Tolerance) -> Result<(), String> {
    let mut r = rng(13);
    let tol = Tolerance {
        abs: tol.abs * 10.0,
        rel: tol.rel * 10.0,
    };
    // Group sizes with empty groups, a single row, and blocks large enough for a backend's
    // parallel path.
    for (sizes, d_in, d_out) in [
        (vec![0usize, 3, 0, 1, 5], 4usize, 3usize),
        (vec![2], 1, 1),
        (vec![0, 0], 3, 2),
        (vec![300, 0, 7, 260], 33, 17),
        (vec![5; 40], 9, 6),
    ] {
        let mut offsets = vec![0u32];
        for s in &sizes {
            offsets.push(offsets.last().unwrap() + *s as u32);
        }
        let p = *offsets.last().unwrap() as usize;
        let g = sizes.len();
        for op in GroupedOp::ALL {
            for beta in [0.0, 1.0] {
                let (sa, sb, sc) = match op {
                    GroupedOp::XW => ([p, d_in], [g * d_in, d_out], [p, d_out]),
                    GroupedOp::XWt => ([p, d_out], [g * d_in, d_out], [p, d_in]),
                    GroupedOp::XtY => ([p, d_in], [p, d_out], [g * d_in, d_out]),
                };
                let a = random_pair(b, &mut r, sa);
                let bm = random_pair(b, &mut r, sb);
                let mut c = random_pair(b, &mut r, sc);
                if beta == 0.0 {
                    b.fill(&mut c.got, f32::NAN);
                }
                b.grouped_matmul(op, &a.got, &bm.got, &offsets, beta, &mut c.got);
                Reference.grouped_matmul(op, &a.want, &bm.want, &offsets, beta, &mut c.want);
                compare(
                    b,
                    &format!("grouped_matmul {op:?} sizes={sizes:?} beta={beta}"),
                    &c.got,
                    &c.want,
                    &tol,
                )?;
                // The same products reading their row-segmented inputs through an index:
                // fewer stored rows than pairs, in any order, with repeats (as a routing with
                // K = 2 reads each input row twice).
                let stored = p.div_ceil(2).max(1);
                let rows: Vec<u32> = (0..p).map(|_| r.random_range(0..stored as u32)).collect();
                let a = random_pair(b, &mut r, [stored, sa[1]]);
                let bm = match op {
                    GroupedOp::XtY => random_pair(b, &mut r, [stored, sb[1]]),
                    _ => bm,
                };
                let mut c = random_pair(b, &mut r, sc);
                if beta == 0.0 {
                    b.fill(&mut c.got, f32::NAN);
                }
                b.grouped_matmul_rows(op, &a.got, &bm.got, &rows, &offsets, beta, &mut c.got);
                Reference.grouped_matmul_rows(
                    op,
                    &a.want,
                    &bm.want,
                    &rows,
                    &offsets,
                    beta,
                    &mut c.want,
                );
                compare(
                    b,
                    &format!("grouped_matmul_rows {op:?} sizes={sizes:?} beta={beta}"),
                    &c.got,
                    &c.want,
                    &tol,
                )?;
            }
            // The same products into a new tensor, with per-group biases for XW.
            if op != GroupedOp::XtY {
                let stored = p.div_ceil(2).max(1);
                let rows: Vec<u32> = (0..p).map(|_| r.random_range(0..stored as u32)).collect();
                let sa = if op == GroupedOp::XW { d_in } else { d_out };
                let a = random_pair(b, &mut r, [stored, sa]);
                let w = random_pair(b, &mut r, [g * d_in, d_out]);
                let bias = random_pair(b, &mut r, [g, d_out]);
                for with_bias in [false, op == GroupedOp::XW] {
                    let chosen = with_bias.then_some((&bias.got, &bias.want));
                    let got = b.grouped_product_rows(
                        op,
                        &a.got,
                        &w.got,
                        &rows,
                        &offsets,
                        chosen.map(|(got, _)| got),
                    );
                    let want = Reference.grouped_product_rows(
                        op,
                        &a.want,
                        &w.want,
                        &rows,
                        &offsets,
                        chosen.map(|(_, want)| want),
                    );
                    compare(
                        b,
                        &format!("grouped_product_rows {op:?} sizes={sizes:?} bias={with_bias}"),
                        &got,
                        &want,
                        &tol,
                    )?;
                }
            }
        }
        // Segment sums over a random many-to-one map, with empty segments.
        let src = random_pair(b, &mut r, [p.max(1), d_out]);
        let pos: Vec<u32> = (0..p).map(|_| r.random_range(0..p.max(1) as u32)).collect();
        let mut ptr = vec![0u32];
        for s in &sizes {
            ptr.push(ptr.last().unwrap() + *s as u32);
        }
        compare(
            b,
            "segment_sum_rows",
            &b.segment_sum_rows(&src.got, &pos, &ptr),
            &Reference.segment_sum_rows(&src.want, &pos, &ptr),
            &tol,
        )?;
        let table = random_pair(b, &mut r, [g, d_out]);
        let idx: Vec<u32> = (0..p).map(|_| r.random_range(0..g as u32)).collect();
        let mut dst = random_pair(b, &mut r, [p, d_out]);
        b.add_gathered_rows(&mut dst.got, &table.got, &idx);
        Reference.add_gathered_rows(&mut dst.want, &table.want, &idx);
        compare(b, "add_gathered_rows", &dst.got, &dst.want, &tol)?;
    }
    Ok(())
}

/// Calls that break an operation's contract must panic, naming the operation and the problem,
/// before they reach the backend's kernel (the same message on every backend).
fn misuse<B: Backend>(b: &B, _: &Tolerance) -> Result<(), String> {
    type Case<B> = (&'static str, fn(&B));
    let cases: [Case<B>; 8] = [
        ("upload: shape [2, 2] needs 4 values, got 3", |b| {
            b.upload([2, 2], &[1.0; 3]);
        }),
        ("matmul: inner dimensions differ", |b| {
            let (x, y) = (b.zeros([2, 3]), b.zeros([4, 2]));
            let mut c = b.zeros([2, 2]);
            b.matmul(1.0, &x, Transpose::No, &y, Transpose::No, 0.0, &mut c);
        }),
        ("binary: shape mismatch", |b| {
            b.binary(BinaryOp::Add, &b.zeros([2, 3]), &b.zeros([3, 2]));
        }),
        ("gather_rows: index 5 out of range for 3", |b| {
            b.gather_rows(&b.zeros([3, 2]), &[0, 5]);
        }),
        ("pick_cols: one column per row", |b| {
            b.pick_cols(&b.zeros([3, 2]), &[0, 1]);
        }),
        ("copy_cols: columns 1..4 exceed 3", |b| {
            let mut dst = b.zeros([2, 8]);
            b.copy_cols(&b.zeros([2, 3]), 1, &mut dst, 0, 3, false);
        }),
        ("grouped_matmul: offsets end at 3", |b| {
            let mut c = b.zeros([4, 2]);
            let (x, w) = (b.zeros([4, 3]), b.zeros([6, 2]));
            b.grouped_matmul(GroupedOp::XW, &x, &w, &[0, 1, 3], 0.0, &mut c);
        }),
        ("segment_sum_rows: index 9 out of range", |b| {
            b.segment_sum_rows(&b.zeros([3, 2]), &[0, 9], &[0, 2]);
        }),
    ];
    for (want, call) in cases {
        let message = match catch_unwind(AssertUnwindSafe(|| call(b))) {
            Ok(()) => return Err(format!("misuse \"{want}\" did not panic")),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        if !message.contains(want) {
            return Err(format!("misuse \"{want}\" panicked with \"{message}\""));
        }
    }
    Ok(())
}
