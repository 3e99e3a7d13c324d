//! EM's partial E-step, written once for every model and task: for each example, the stored
//! assignment and `samples - 1` fresh ancestral samples are scored by
//! `log p(y | ., a) + log p(a | .)` with the current parameters; the best is stored, ties
//! keeping the stored one.

use std::collections::HashSet;

use modula_modular::Selection;
use modula_nn::{Ctx, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand_chacha::ChaCha8Rng;

use crate::model::Model;
use crate::table::AssignmentTable;
use crate::task::Batch;

/// What an E-step measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EStats {
    /// Fraction of the batch's keys (examples, or token positions) whose stored assignment
    /// changed.
    pub changed: f64,
    /// Mean score `log p(y|.,a*) + log p(a*|.)` of the stored assignments before the step.
    pub score_before: f64,
    /// The same after the step (never lower, for fixed parameters).
    pub score_after: f64,
}

/// The stored selections of a batch's groups.
pub fn stored_selections<I>(table: &AssignmentTable, batch: &Batch<I>) -> Vec<Selection> {
    batch
        .groups
        .iter()
        .map(|g| table.selection(g.layer, &g.keys))
        .collect()
}

/// For each of `n` examples, the candidate row with the highest score among rows
/// `s * n + i` (`s < samples`); strictly better only, so ties keep candidate 0, the stored one.
pub fn best_candidates(scores: &[f64], n: usize, samples: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let mut best = i;
            for s in 1..samples {
                if scores[s * n + i] > scores[best] {
                    best = s * n + i;
                }
            }
            best
        })
        .collect()
}

/// Runs the E-step on `batch`: scores the candidates, stores each example's best in `table`
/// and reports what changed.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub fn e_step<B: Backend, M: Model<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    batch: &Batch<M::Input>,
    table: &mut AssignmentTable,
    samples: usize,
    rng: &mut ChaCha8Rng,
    ctx: &mut Ctx,
) -> Result<EStats, BackendError> {
    let n = batch.examples;
    let stored = stored_selections(table, batch);
    let cands = model.score_candidates(b, params, &batch.input, &stored, samples, rng, ctx)?;
    let best = best_candidates(&cands.scores, n, samples);
    let (mut before, mut after) = (0.0, 0.0);
    for (i, &row) in best.iter().enumerate() {
        before += cands.scores[i];
        after += cands.scores[row];
    }
    // A key counts once however many groups it appears in (the layers of one example).
    let mut keys = HashSet::new();
    let mut changed = HashSet::new();
    for (group, sel) in batch.groups.iter().zip(&cands.selections) {
        for (i, &row) in best.iter().enumerate() {
            let key = group.keys[i];
            keys.insert(key);
            if table.store(group.layer, key, sel, row) {
                changed.insert(key);
            }
        }
    }
    let nf = n.max(1) as f64;
    Ok(EStats {
        changed: changed.len() as f64 / keys.len().max(1) as f64,
        score_before: before / nf,
        score_after: after / nf,
    })
}
