//! The global statistics of a data-parallel step: each rank's statistics of its share of the
//! batch, summed over the ranks ([`Replicas::sum`]) into what one process would report for
//! the whole batch.

use modula_tensor::Backend;

use crate::algo::StepStats;
use crate::error::TrainError;
use crate::estep::EStats;
use crate::model::ControllerStats;
use crate::replicas::Replicas;

/// `stats` of a rank's share of `n` examples as sums: the rank's part of the global sums.
/// Whether the rank has controller statistics travels too, since a rank without examples
/// cannot tell whether the network has controllers.
fn step_sums(stats: &StepStats, n: f64) -> Vec<f64> {
    let c = stats.controller.clone().unwrap_or_default();
    let mut v = vec![
        n,
        stats.nll * n,
        stats.ctrl_nll * n,
        stats.importance * n,
        stats.units as f64,
        c.mean_entropy * n,
        c.batch_entropy * n,
        f64::from(u8::from(stats.controller.is_some())),
    ];
    v.extend(stats.usage.iter().flatten().map(|&u| u as f64));
    v
}

/// The global statistics of a gradient step whose rank-local statistics are `stats`, over
/// `n` local examples: means weighted by each rank's examples, usage and units summed. The
/// controller's batch entropy is the weighted mean of the ranks' (the entropy of the whole
/// batch's mean distribution would need the distributions themselves). Returns them with
/// the global example count.
///
/// # Errors
/// A failed collective.
pub(crate) fn global_step<B: Backend>(
    replicas: &dyn Replicas<B>,
    stats: StepStats,
    n: usize,
) -> Result<(StepStats, usize), TrainError> {
    let mut v = step_sums(&stats, n as f64);
    replicas.sum(&mut v)?;
    let total = v[0];
    let mean = |s: f64| if total > 0.0 { s / total } else { 0.0 };
    let mut usage = v[8..].iter();
    let usage = stats
        .usage
        .iter()
        .map(|layer| {
            layer
                .iter()
                .map(|_| *usage.next().expect("summed") as u64)
                .collect()
        })
        .collect();
    let global = StepStats {
        nll: mean(v[1]),
        ctrl_nll: mean(v[2]),
        importance: mean(v[3]),
        penalty: stats.penalty,
        controller: (v[7] > 0.0).then(|| ControllerStats {
            mean_entropy: mean(v[5]),
            batch_entropy: mean(v[6]),
        }),
        usage,
        units: v[4] as usize,
    };
    Ok((global, total as usize))
}

/// The global statistics of an E-step whose rank-local ones are `e`, over `n` local
/// examples (feed-forward batches: one key per example), with `visited` keys of the rank's
/// block visited so far, of the task's `trained` keys.
///
/// # Errors
/// A failed collective.
pub(crate) fn global_e_step<B: Backend>(
    replicas: &dyn Replicas<B>,
    e: &EStats,
    n: usize,
    visited: usize,
    trained: usize,
) -> Result<EStats, TrainError> {
    let n = n as f64;
    let mut v = [
        n,
        e.changed * n,
        e.score_before * n,
        e.score_after * n,
        visited as f64,
    ];
    replicas.sum(&mut v)?;
    let mean = |s: f64| if v[0] > 0.0 { s / v[0] } else { 0.0 };
    Ok(EStats {
        // The changed keys were counted whole: round away the division's rounding.
        changed: mean(v[1].round()),
        score_before: mean(v[2]),
        score_after: mean(v[3]),
        coverage: v[4] / trained.max(1) as f64,
    })
}
