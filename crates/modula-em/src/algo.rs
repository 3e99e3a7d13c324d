//! One iteration of each training algorithm on a mini-batch: EM's E-step and M-step,
//! REINFORCE, and plain gradient steps for noisy top-k and dense networks.
//!
//! Each function computes gradients (and, for the E-step, new assignments); the caller applies
//! the optimiser, so every algorithm shares the same optimiser, clipping and schedule.

use modula_modular::Selection;
use modula_nn::{Ctx, Grads, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand::Rng;

use crate::model::{ControllerStats, ModularModel, Output, Target};
use crate::table::AssignmentTable;

/// A mini-batch: inputs, targets, and the stable indices of its examples.
#[derive(Debug)]
pub struct Batch<B: Backend> {
    /// Inputs `[n, d_in]`.
    pub x: B::Tensor,
    /// Targets.
    pub target: Target<B>,
    /// Stable global index of each row (keys the assignment table).
    pub idx: Vec<u32>,
}

/// What a gradient step measured on its batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Mean `-log p(y | x, a)`.
    pub task_nll: f64,
    /// Mean `-log p(a | x)`.
    pub ctrl_nll: f64,
    /// Controller entropies, when requested.
    pub controller: Option<ControllerStats>,
    /// Per layer, how many rows used each module.
    pub usage: Vec<Vec<u64>>,
}

/// What an E-step measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EStats {
    /// Fraction of the batch's examples whose stored assignment changed.
    pub changed: f64,
    /// Mean score `log p(y|x,a*) + log p(a*|x)` of the stored assignments before the step.
    pub score_before: f64,
    /// The same after the step (never lower, for fixed parameters).
    pub score_after: f64,
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

fn usage(selections: &[Selection], shapes: &[(usize, usize)]) -> Vec<Vec<u64>> {
    selections
        .iter()
        .zip(shapes)
        .map(|(s, &(m, _))| {
            let mut counts = vec![0u64; m];
            s.as_slice().iter().for_each(|&a| counts[a as usize] += 1);
            counts
        })
        .collect()
}

/// Runs the backward pass with `d_task = task_weight / n` and per-row controller weights,
/// returning the batch statistics.
fn backward_with<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    out: Output<B, M::Cache>,
    d_ctrl: &[f32],
    grads: &mut Grads<B>,
) -> Result<StepStats, BackendError> {
    let n = d_ctrl.len();
    let task = b.download(&out.task_nll)?;
    let logp = b.download(&out.ctrl_logp)?;
    let stats = StepStats {
        task_nll: mean(&task),
        ctrl_nll: -mean(&logp),
        controller: out.stats.clone(),
        usage: usage(&out.selections, &model.layer_shapes()),
    };
    let d_task = b.upload([n, 1], &vec![1.0 / n as f32; n]);
    let d_ctrl = b.upload([n, 1], d_ctrl);
    model.backward(b, params, out.cache, &d_task, &d_ctrl, grads)?;
    Ok(stats)
}

/// EM's M-step: gradients of `-mean log p(y | x, a*) - mean log p(a* | x)` with the stored
/// assignments `a*` of the batch.
///
/// # Errors
/// Device failures.
pub fn m_step<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    batch: &Batch<B>,
    table: &AssignmentTable,
    grads: &mut Grads<B>,
    ctx: &mut Ctx,
) -> Result<StepStats, BackendError> {
    let mut route = |l: usize, _: &_| Ok(table.selection(l, &batch.idx));
    let out = model.forward(b, params, &batch.x, &batch.target, &mut route, true, ctx)?;
    let n = batch.idx.len();
    backward_with(model, b, params, out, &vec![-1.0 / n as f32; n], grads)
}

/// Replicates rows `S` times: row `s * n + i` is row `i` (candidate `s` of example `i`).
fn replicate<B: Backend>(b: &B, batch: &Batch<B>, copies: usize) -> (B::Tensor, Target<B>) {
    let n = batch.idx.len();
    let rows: Vec<u32> = (0..copies).flat_map(|_| 0..n as u32).collect();
    let target = match &batch.target {
        Target::Regression { y, variance } => Target::Regression {
            y: b.gather_rows(y, &rows),
            variance: *variance,
        },
        Target::Classes(t) => Target::Classes(rows.iter().map(|&r| t[r as usize]).collect()),
    };
    (b.gather_rows(&batch.x, &rows), target)
}

/// EM's partial E-step: for each example, candidates are its stored assignment plus
/// `samples - 1` fresh ancestral samples from the controllers, all scored in one routed pass
/// (the candidates are just more rows) by `log p(y | x, a) + log p(a | x)` with the current
/// parameters; the best is stored, ties keeping the stored one.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub fn e_step<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    batch: &Batch<B>,
    table: &mut AssignmentTable,
    samples: usize,
    rng: &mut impl Rng,
    ctx: &mut Ctx,
) -> Result<EStats, BackendError> {
    let n = batch.idx.len();
    let (x, target) = replicate(b, batch, samples);
    let stored: Vec<Selection> = (0..model.layer_shapes().len())
        .map(|l| table.selection(l, &batch.idx))
        .collect();
    let mut route = |l: usize, out: &modula_modular::ControllerOutput<B>| {
        // Candidate 0 of every example is its stored assignment; the rest are drawn from the
        // controller given the candidate's own earlier-layer choices (ancestral sampling).
        let drawn = out.sample(b, rng)?;
        let k = stored[l].k();
        let mut picks = stored[l].as_slice().to_vec();
        picks.extend_from_slice(&drawn.as_slice()[n * k..]);
        Ok(Selection::new(k, picks))
    };
    let out = model.forward(b, params, &x, &target, &mut route, false, ctx)?;
    let task = b.download(&out.task_nll)?;
    let logp = b.download(&out.ctrl_logp)?;
    let score = |r: usize| -(task[r] as f64) + logp[r] as f64;
    let (mut changed, mut before, mut after) = (0usize, 0.0, 0.0);
    for i in 0..n {
        let mut best = i;
        for s in 1..samples {
            // Strictly better only: ties keep the stored assignment.
            if score(s * n + i) > score(best) {
                best = s * n + i;
            }
        }
        before += score(i);
        after += score(best);
        let mut any = false;
        for (l, sel) in out.selections.iter().enumerate() {
            any |= table.store(l, batch.idx[i], sel, best);
        }
        changed += any as usize;
    }
    let nf = n.max(1) as f64;
    Ok(EStats {
        changed: changed as f64 / nf,
        score_before: before / nf,
        score_after: after / nf,
    })
}

/// REINFORCE: samples `a ~ p(a | x)`, takes the gradient of `-mean log p(y | x, a)` for the
/// modules and `-(R - baseline) log p(a | x)` for the controllers, with reward
/// `R = log p(y | x, a)`; then moves the baseline towards the batch's mean reward.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub fn reinforce_step<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    batch: &Batch<B>,
    baseline: &mut Option<f64>,
    decay: f32,
    rng: &mut impl Rng,
    grads: &mut Grads<B>,
    ctx: &mut Ctx,
) -> Result<StepStats, BackendError> {
    let mut route = |_: usize, out: &modula_modular::ControllerOutput<B>| out.sample(b, rng);
    let out = model.forward(b, params, &batch.x, &batch.target, &mut route, true, ctx)?;
    let rewards: Vec<f64> = b
        .download(&out.task_nll)?
        .iter()
        .map(|&t| -(t as f64))
        .collect();
    let mean_r = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    // The first batch's mean reward starts the baseline, so early updates are centred.
    let base = *baseline.get_or_insert(mean_r);
    let n = rewards.len();
    let d_ctrl: Vec<f32> = rewards
        .iter()
        .map(|&r| (-(r - base) / n as f64) as f32)
        .collect();
    let stats = backward_with(model, b, params, out, &d_ctrl, grads)?;
    *baseline = Some(decay as f64 * base + (1.0 - decay as f64) * mean_r);
    Ok(stats)
}

/// A plain gradient step on `-mean log p(y | x, a)` with the network's own choice of modules
/// (noisy top-k gating, or the single module of a dense network); the controller term is not
/// trained (`d_ctrl = 0`).
///
/// # Errors
/// Device failures.
pub fn gated_step<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    batch: &Batch<B>,
    grads: &mut Grads<B>,
    ctx: &mut Ctx,
) -> Result<StepStats, BackendError> {
    let mut route = |_: usize, out: &modula_modular::ControllerOutput<B>| out.greedy(b);
    let out = model.forward(b, params, &batch.x, &batch.target, &mut route, true, ctx)?;
    let n = batch.idx.len();
    backward_with(model, b, params, out, &vec![0.0; n], grads)
}

/// Greedy evaluation: each layer takes the argmax of every slot. Returns the output (with
/// per-row `task_nll` and the prediction).
///
/// # Errors
/// Device failures.
pub fn evaluate<B: Backend, M: ModularModel<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    x: &B::Tensor,
    target: &Target<B>,
) -> Result<Output<B, M::Cache>, BackendError> {
    let mut route = |_: usize, out: &modula_modular::ControllerOutput<B>| out.greedy(b);
    model.forward(b, params, x, target, &mut route, true, &mut Ctx::eval())
}
