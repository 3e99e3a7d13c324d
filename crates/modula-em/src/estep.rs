//! EM's partial E-step, written once for every model and task: for each example, the stored
//! assignment and the model's other candidates (`samples - 1` fresh ancestral samples, or the
//! path a per-step search found) are scored by `log p(y | ., a) + log p(a | .)` with the
//! current parameters; the best is stored, ties keeping the stored one.
//!
//! It also holds the pieces of a per-step search that do not depend on the model: drawing
//! proposals ([`propose`], [`draw_slots`]) and choosing each stream's candidate at a step
//! ([`choose_step`]).

use std::collections::HashSet;

use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Ctx, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::EStepSettings;
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
    /// Share of the task's trained keys that some E-step has visited so far (filled in by
    /// the trainer, from the algorithm's record and the task's key count).
    pub coverage: f64,
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
    estep: &EStepSettings,
    rng: &mut ChaCha8Rng,
    ctx: &mut Ctx,
) -> Result<EStats, BackendError> {
    let n = batch.examples;
    let stored = stored_selections(table, batch);
    let keys = batch.groups.first().map_or(&[][..], |g| &g.keys[..]);
    let cands = model.score_candidates(b, params, &batch.input, &stored, keys, estep, rng, ctx)?;
    let best = best_candidates(&cands.scores, n, cands.samples);
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
        coverage: 0.0,
    })
}

/// One module per slot, drawn from `(1 - uniform) * p + uniform / M`, where `log_probs` holds
/// the slots' log-probabilities `[slots, M]` row-major (inverse-CDF sampling, one uniform
/// draw per slot; the last module absorbs rounding).
pub fn draw_slots(log_probs: &[f32], modules: usize, uniform: f32, rng: &mut impl Rng) -> Vec<u32> {
    let flat = uniform / modules as f32;
    log_probs
        .chunks(modules)
        .map(|row| {
            let u: f32 = rng.random();
            let mut acc = 0.0;
            for (m, &l) in row.iter().enumerate() {
                acc += (1.0 - uniform) * l.exp() + flat;
                if u < acc {
                    return m as u32;
                }
            }
            (modules - 1) as u32
        })
        .collect()
}

/// Proposals from a controller's output: its own samples, or, with `uniform > 0`, draws from
/// its mixture with the uniform distribution ([`draw_slots`]; without repetition for a
/// distinct controller).
///
/// # Errors
/// If the device fails while reading the probabilities.
pub fn propose<B: Backend>(
    b: &B,
    out: &ControllerOutput<B>,
    uniform: f32,
    rng: &mut impl Rng,
) -> Result<Selection, BackendError> {
    if uniform == 0.0 {
        return out.sample(b, rng);
    }
    let lp = b.download(&out.log_probs)?;
    if out.distinct {
        let picks = lp
            .chunks(out.modules)
            .flat_map(|row| modula_modular::draw_distinct(row, out.k, uniform, rng))
            .collect();
        return Ok(Selection::new(out.k, picks));
    }
    Ok(Selection::new(
        out.k,
        draw_slots(&lp, out.modules, uniform, rng),
    ))
}

/// One random stream per example and candidate of an E-step, for examples with table keys
/// `keys`: candidate `c`'s streams are streams `key` of a generator seeded by `c` and by
/// `base`, one draw from the E-step's own stream.
///
/// An example's draws thus depend on the run's seed, the iteration, its key and the candidate
/// only, not on which other examples share its batch (a data-parallel rank that E-steps its
/// share of a batch draws for each example what one process drawing for the whole batch
/// draws), nor on the order in which candidates are scored.
pub fn example_streams(base: u64, candidate: usize, keys: &[u32]) -> Vec<ChaCha8Rng> {
    // seed_from_u64 spreads its argument through a PCG step, so neighbouring seeds give
    // unrelated generators.
    let seed = base.wrapping_add((candidate as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    keys.iter()
        .map(|&key| {
            let mut stream = ChaCha8Rng::seed_from_u64(seed);
            stream.set_stream(u64::from(key));
            stream
        })
        .collect()
}

/// [`propose`] with one stream per example: the controller's rows are candidates `rows / n`
/// deep of the `n = streams.len()` examples (row `j` is example `j % n`'s), and each row's
/// slots draw from its example's stream, in row order (without repetition for a distinct
/// controller).
///
/// # Errors
/// If the device fails while reading the probabilities.
///
/// # Panics
/// If the rows are not a multiple of the examples.
pub fn propose_per_example<B: Backend>(
    b: &B,
    out: &ControllerOutput<B>,
    uniform: f32,
    streams: &mut [ChaCha8Rng],
) -> Result<Selection, BackendError> {
    let lp = b.download(&out.log_probs)?;
    let heads = if out.distinct { 1 } else { out.k };
    let row_len = heads * out.modules;
    let rows = lp.len() / row_len.max(1);
    let n = streams.len();
    assert!(
        n > 0 && rows.is_multiple_of(n) || rows == 0,
        "{rows} candidate rows for {n} examples"
    );
    let picks = lp
        .chunks(row_len)
        .enumerate()
        .flat_map(|(j, row)| {
            let stream = &mut streams[j % n];
            if out.distinct {
                modula_modular::draw_distinct(row, out.k, uniform, stream)
            } else {
                draw_slots(row, out.modules, uniform, stream)
            }
        })
        .collect();
    Ok(Selection::new(out.k, picks))
}

/// A step of a per-step search: for each of `n` streams, which of its `candidates` to keep.
/// `scores[j * n + i]` is candidate `j` of stream `i`, whose modules are
/// `picks[(j * n + i) * k..][..k]`. Without options it is each stream's best candidate, ties
/// going to the lower index (candidate 0, the stored one, when the candidates are proposals).
/// With `estep.sample` the choice is drawn from the softmax of the stream's scores; with
/// `estep.capacity` each module takes at most `ceil(capacity * n * k / modules)` streams
/// (best scores placed first, or, when sampling, streams in a random order), and a stream
/// that fits nowhere takes its best candidate.
#[allow(clippy::too_many_arguments)]
pub fn choose_step(
    scores: &[f64],
    n: usize,
    candidates: usize,
    picks: &[u32],
    k: usize,
    modules: usize,
    estep: &EStepSettings,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let best = |i: usize| {
        (1..candidates).fold(0, |b, j| {
            if scores[j * n + i] > scores[b * n + i] {
                j
            } else {
                b
            }
        })
    };
    let cap = if estep.capacity > 0.0 {
        (estep.capacity as f64 * (n * k) as f64 / modules as f64).ceil() as usize
    } else {
        usize::MAX
    };
    let mut load = vec![0usize; modules];
    let modules_of = |j: usize, i: usize| &picks[(j * n + i) * k..(j * n + i + 1) * k];
    let fits = |load: &[usize], j: usize, i: usize| {
        let mods = modules_of(j, i);
        mods.iter()
            .all(|&m| load[m as usize] + mods.iter().filter(|&&o| o == m).count() <= cap)
    };
    let mut chosen = vec![usize::MAX; n];
    if estep.sample {
        let mut order: Vec<usize> = (0..n).collect();
        if cap < usize::MAX {
            // A random order, so that no stream always gets the first pick of the modules.
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
        }
        for i in order {
            let feasible: Vec<usize> = (0..candidates).filter(|&j| fits(&load, j, i)).collect();
            let pool = if feasible.is_empty() {
                vec![best(i)]
            } else {
                feasible
            };
            let top = pool
                .iter()
                .map(|&j| scores[j * n + i])
                .fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = pool
                .iter()
                .map(|&j| (scores[j * n + i] - top).exp())
                .collect();
            let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
            let mut pick = *pool.last().expect("a non-empty pool");
            for (&j, w) in pool.iter().zip(&weights) {
                if u < *w {
                    pick = j;
                    break;
                }
                u -= w;
            }
            chosen[i] = pick;
            modules_of(pick, i)
                .iter()
                .for_each(|&m| load[m as usize] += 1);
        }
        return chosen;
    }
    if cap == usize::MAX {
        return (0..n).map(best).collect();
    }
    let mut pairs: Vec<(usize, usize)> = (0..candidates)
        .flat_map(|j| (0..n).map(move |i| (j, i)))
        .collect();
    // A NaN score ranks last, as it never wins `best` either.
    let key = |j: usize, i: usize| {
        let v = scores[j * n + i];
        if v.is_nan() { f64::NEG_INFINITY } else { v }
    };
    pairs.sort_by(|&(ja, ia), &(jb, ib)| {
        key(jb, ib)
            .total_cmp(&key(ja, ia))
            .then(ja.cmp(&jb))
            .then(ia.cmp(&ib))
    });
    for (j, i) in pairs {
        if chosen[i] == usize::MAX && fits(&load, j, i) {
            chosen[i] = j;
            modules_of(j, i).iter().for_each(|&m| load[m as usize] += 1);
        }
    }
    for (i, c) in chosen.iter_mut().enumerate() {
        if *c == usize::MAX {
            *c = best(i);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn settings() -> EStepSettings {
        EStepSettings {
            search: crate::config::Search::Step,
            ..EStepSettings::paths(3)
        }
    }

    /// Candidate `j` of every stream picks module `j` (K = 1, enumeration).
    fn enumerated(n: usize, c: usize) -> Vec<u32> {
        (0..c as u32)
            .flat_map(|j| std::iter::repeat_n(j, n))
            .collect()
    }

    #[test]
    fn without_options_each_stream_takes_its_best_and_ties_go_to_the_lower_index() {
        // Two streams, three candidates: stream 0 prefers 2, stream 1 ties 0 and 1.
        let scores = [0.0, 1.0, 1.0, 1.0, 5.0, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let chosen = choose_step(
            &scores,
            2,
            3,
            &enumerated(2, 3),
            1,
            3,
            &settings(),
            &mut rng,
        );
        assert_eq!(chosen, vec![2, 0]);
    }

    #[test]
    fn a_capacity_limit_spreads_the_streams_over_the_modules() {
        // Four streams all prefer module 0; with a capacity of 1 x (4 / 2) = 2 streams per
        // module, the two with the strongest preference keep it and the others move to 1.
        let n = 4;
        let scores = [9.0, 8.0, 7.0, 6.0, 0.0, 0.0, 0.0, 0.0];
        let e = EStepSettings {
            capacity: 1.0,
            ..settings()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let chosen = choose_step(&scores, n, 2, &enumerated(n, 2), 1, 2, &e, &mut rng);
        assert_eq!(chosen, vec![0, 0, 1, 1]);
    }

    #[test]
    fn sampled_choices_follow_the_softmax_of_the_scores_and_respect_capacity() {
        let e = EStepSettings {
            sample: true,
            ..settings()
        };
        let scores = [0.0, 2.0_f64.ln()]; // one stream, odds 1 : 2
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 30_000;
        let ones = (0..draws)
            .filter(|_| choose_step(&scores, 1, 2, &[0, 1], 1, 2, &e, &mut rng)[0] == 1)
            .count();
        let share = ones as f64 / draws as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.01, "share {share}");
        let capped = EStepSettings { capacity: 1.0, ..e };
        let scores = [5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0];
        for _ in 0..50 {
            let chosen = choose_step(&scores, 4, 2, &enumerated(4, 2), 1, 2, &capped, &mut rng);
            assert_eq!(chosen.iter().filter(|&&j| j == 0).count(), 2, "{chosen:?}");
        }
    }

    #[test]
    fn uniform_mixture_proposals_reach_modules_the_controller_rules_out() {
        // A controller certain of module 0 (log p = 0, the others -inf).
        let lp = [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let only = draw_slots(&lp.repeat(200), 3, 0.0, &mut rng);
        assert!(only.iter().all(|&m| m == 0));
        let mixed = draw_slots(&lp.repeat(3000), 3, 0.3, &mut rng);
        let others = mixed.iter().filter(|&&m| m != 0).count() as f64 / 3000.0;
        assert!(
            (others - 0.2).abs() < 0.03,
            "share of other modules {others}"
        );
    }
}
