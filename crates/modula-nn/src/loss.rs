//! Losses that return one value per example, as EM's scoring needs `log p(y | x, a)` per row.

use modula_tensor::{Backend, BackendError, BinaryOp, ReduceOp, UnaryOp};

use crate::param::{Grads, ParamId, ParamStore};

/// Softmax cross-entropy over classes (or a vocabulary): per-row negative log-likelihood
/// `-log softmax(logits)[target]`. The logits are consumed: the log-probabilities are written
/// over them where the backend can.
///
/// Returns `(nll [n, 1], log_probs [n, classes])`; keep `log_probs` for the backward pass.
///
/// # Panics
/// If `targets.len()` differs from the number of rows or a target is out of range.
#[track_caller]
pub fn softmax_cross_entropy<B: Backend>(
    b: &B,
    logits: B::Tensor,
    targets: &[u32],
) -> (B::Tensor, B::Tensor) {
    let log_probs = b.log_softmax_rows_owned(logits);
    let mut nll = b.pick_cols(&log_probs, targets);
    b.scale(&mut nll, -1.0);
    (nll, log_probs)
}

/// Gradient of [`softmax_cross_entropy`] with respect to the logits, given `d_nll [n, 1]`
/// (the weight of each example's loss, e.g. `1/n` for a mean).
#[track_caller]
pub fn softmax_cross_entropy_backward<B: Backend>(
    b: &B,
    log_probs: &B::Tensor,
    targets: &[u32],
    d_nll: &B::Tensor,
) -> B::Tensor {
    b.cross_entropy_backward(log_probs, targets, d_nll)
}

/// Gaussian negative log-likelihood with fixed variance, per row:
/// `0.5 * sum_j ((y_j - mean_j)^2 / var + ln(2 pi var))`. With `var = 1` this is half the
/// squared error plus a constant.
///
/// # Panics
/// If the shapes differ or `variance <= 0`.
#[track_caller]
pub fn gaussian_nll<B: Backend>(
    b: &B,
    mean: &B::Tensor,
    target: &B::Tensor,
    variance: f32,
) -> B::Tensor {
    assert!(
        variance > 0.0,
        "gaussian_nll: variance must be positive, got {variance}"
    );
    let diff = b.binary(BinaryOp::Sub, mean, target);
    let mut sq = b.unary(UnaryOp::Square, &diff);
    b.scale(&mut sq, 0.5 / variance);
    let mut nll = b.reduce_rows(ReduceOp::Sum, &sq);
    let cols = b.shape(mean)[1] as f32;
    let constant = 0.5 * cols * (2.0 * std::f32::consts::PI * variance).ln();
    let mut c = b.zeros(b.shape(&nll));
    b.fill(&mut c, constant);
    b.axpy(1.0, &c, &mut nll);
    nll
}

/// Gradient of [`gaussian_nll`] with respect to the mean, given `d_nll [n, 1]`:
/// `d_mean = d_nll * (mean - target) / var`.
#[track_caller]
pub fn gaussian_nll_backward<B: Backend>(
    b: &B,
    mean: &B::Tensor,
    target: &B::Tensor,
    variance: f32,
    d_nll: &B::Tensor,
) -> B::Tensor {
    let mut d = b.binary(BinaryOp::Sub, mean, target);
    b.scale(&mut d, 1.0 / variance);
    b.scale_rows(&mut d, d_nll);
    d
}

/// L1 penalty on activations, per row: `lambda * sum_j |x_ij|` (`[n, 1]`). Added to the loss,
/// it pushes ReLU activations to exact zeros, which the sparse products turn into saved time
/// (`SparseLinear`).
///
/// # Panics
/// If `lambda` is negative or NaN.
#[track_caller]
pub fn l1_penalty<B: Backend>(b: &B, x: &B::Tensor, lambda: f32) -> B::Tensor {
    assert!(
        lambda >= 0.0,
        "l1_penalty: lambda must be a non-negative number, got {lambda}"
    );
    let mut penalty = b.reduce_rows(ReduceOp::Sum, &b.unary(UnaryOp::Abs, x));
    b.scale(&mut penalty, lambda);
    penalty
}

/// Gradient of [`l1_penalty`] with respect to `x`, given `d_penalty [n, 1]` (the weight of each
/// row's penalty): `dx_ij = d_penalty_i * lambda * sign(x_ij)`, with `sign(0) = 0` (the
/// subgradient that keeps exact zeros at zero).
///
/// # Panics
/// If `d_penalty` is not `[rows(x), 1]`.
#[track_caller]
pub fn l1_penalty_backward<B: Backend>(
    b: &B,
    x: &B::Tensor,
    d_penalty: &B::Tensor,
    lambda: f32,
) -> B::Tensor {
    let mut dy = b.zeros(b.shape(x));
    b.fill(&mut dy, lambda);
    b.scale_rows(&mut dy, d_penalty);
    b.unary_backward(UnaryOp::Abs, x, &b.unary(UnaryOp::Abs, x), &dy)
}

/// L1 penalty on weights: adds `lambda * sign(W)` to the gradient of each parameter in `ids`
/// and returns the penalty `lambda * sum |W|` over them (for the logged loss).
///
/// # Errors
/// A device error while reading the penalty back.
pub fn l1_weights<B: Backend>(
    b: &B,
    params: &ParamStore<B>,
    ids: &[ParamId],
    lambda: f32,
    grads: &mut Grads<B>,
) -> Result<f64, BackendError> {
    let mut total = 0.0;
    for &id in ids {
        let w = params.get(id);
        let [rows, _] = b.shape(w);
        let mut ones = b.zeros([rows, 1]);
        b.fill(&mut ones, 1.0);
        grads.accumulate(b, id, &l1_penalty_backward(b, w, &ones, lambda));
        let per_row = b.download(&l1_penalty(b, w, lambda))?;
        total += per_row.iter().map(|&v| v as f64).sum::<f64>();
    }
    Ok(total)
}
