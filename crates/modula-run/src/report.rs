//! The report over language-modelling runs (`modula report RUN...`): the table (one row per run) and its validation
//! curves in one figure, from the runs' `summary.json` and `metrics.jsonl`. Image runs have a
//! report of their own ([`crate::report_images`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::RunConfig;
use crate::dir::{CONFIG_FILE, METRICS_FILE, RunDir, SUMMARY_FILE};
use crate::error::{RunError, run_error};
use crate::plot::lm::{self as lm_plot, Curve};
use crate::records::{LmRecord, LmSummary};
use crate::{files, history};

/// One run's figures as `results.json` lists them (`modula report --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    /// The run directory.
    pub run: String,
    /// The run's name (task, algorithm, M and K; runs of other configurations can share it).
    pub name: String,
    /// The algorithm.
    pub algo: String,
    /// `M` (absent for dense runs).
    pub m: Option<usize>,
    /// `K` (absent for dense runs).
    pub k: Option<usize>,
    /// The seed.
    pub seed: u64,
    /// Epochs trained.
    pub epochs: usize,
    /// What a dense run is matched to.
    pub dense_match: Option<String>,
    /// Test perplexity, greedy routes.
    pub test_ppl: f64,
    /// Validation perplexity, greedy routes.
    pub valid_ppl: f64,
    /// Test perplexity under the filtered mixture.
    pub test_ppl_mixture: Option<f64>,
    /// Test perplexity along the committed posterior routes (a diagnostic only).
    pub test_ppl_posterior: Option<f64>,
    /// Routes the mixture scores per token.
    pub mixture_routes: Option<usize>,
    /// Trainable scalars.
    pub parameters: usize,
    /// FLOPs of one forward pass per token.
    pub flops_per_token: u64,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// `exp` of the entropy of the test split's greedy module usage.
    pub effective_modules: Option<f64>,
    /// Mean controller NLL per slot over the last epoch.
    pub ctrl_nll: Option<f64>,
    /// Share of training positions any E-step visited.
    pub coverage: Option<f64>,
    /// Change of the validation perplexity over the last epoch (negative: still falling).
    pub last_epoch_slope: Option<f64>,
}

impl RunResult {
    fn new(dir: &Path, s: &LmSummary, records: &[LmRecord]) -> Self {
        let filtered = s.filtered.as_ref();
        RunResult {
            run: dir.display().to_string(),
            name: s.name.clone(),
            algo: s.algo.clone(),
            m: s.modules,
            k: s.k,
            seed: s.seed,
            epochs: s.epochs,
            dense_match: s.dense_match.clone(),
            test_ppl: s.test_ppl,
            valid_ppl: s.valid_ppl,
            test_ppl_mixture: filtered.map(|f| f.test_ppl_mixture),
            test_ppl_posterior: filtered.map(|f| f.test_ppl_posterior),
            mixture_routes: filtered.map(|f| f.mixture_routes),
            parameters: s.parameters,
            flops_per_token: s.flops_per_token,
            tokens_per_s: s.tokens_per_s,
            effective_modules: s.effective_modules,
            // Summaries of dense and top-k runs written before they left the field out hold a
            // meaningless 0 (those models have no controller distribution).
            ctrl_nll: s
                .ctrl_nll_slot
                .filter(|_| matches!(s.algo.as_str(), "em" | "reinforce" | "uniform")),
            coverage: s.coverage,
            last_epoch_slope: last_epoch_slope(records),
        }
    }
}

/// The validation perplexity at the last epoch end minus that at the epoch end before it
/// (the run's start counts as one), from the records' evaluations at whole epochs.
fn last_epoch_slope(records: &[LmRecord]) -> Option<f64> {
    let ends: Vec<f64> = records
        .iter()
        .filter(|r| r.epoch.fract() == 0.0)
        .filter_map(|r| r.valid_ppl)
        .collect();
    match ends.as_slice() {
        [.., before, last] => Some(last - before),
        _ => None,
    }
}

/// `a` when present, else `-`.
fn cell(a: Option<f64>, digits: usize) -> String {
    a.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

/// Mean and half the range (`mean ± spread`) of a group's values, `-` when none has one.
fn mean_spread(values: &[Option<f64>], digits: usize) -> String {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return "-".into();
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    format!(
        "{mean:.digits$} ± {:.digits$} ({}-{})",
        (hi - lo) / 2.0,
        fmt(lo, digits),
        fmt(hi, digits)
    )
}

fn fmt(v: f64, digits: usize) -> String {
    format!("{v:.digits$}")
}

/// Tabulates the language-modelling runs `runs` into `out/report.md` and draws their
/// validation curves together, printing the table; with `json`, also writes every run's
/// figures there (see [`RunResult`]). When the first run is an image run, every run must be
/// one, and the image report ([`crate::report_images::report`]) is written instead.
///
/// # Errors
/// A run error naming a run without a readable summary or metrics (or a toy run, or a run of
/// another kind than the first), or a failed write.
pub fn report(runs: &[PathBuf], out: &Path, json: Option<&Path>) -> Result<(), RunError> {
    let configs = runs
        .iter()
        .map(|dir| RunConfig::read(&dir.join(CONFIG_FILE)))
        .collect::<Result<Vec<_>, _>>()?;
    if matches!(configs.first(), Some(RunConfig::Image(_))) {
        return crate::report_images::report(runs, &configs, out, json);
    }
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut histories = Vec::new();
    let mut results = Vec::new();
    for dir in runs {
        let path = dir.join(SUMMARY_FILE);
        let text = files::read_limited(&path, files::SUMMARY_LIMIT).map_err(|e| {
            run_error(format!(
                "cannot read {}: {e} (a run writes it when it stops; finish or resume the run)",
                path.display()
            ))
        })?;
        let s: LmSummary = serde_json::from_slice(&text).map_err(|e| {
            run_error(format!(
                "{} is not a language-modelling summary (`modula report` tabulates ptb and text runs; toy runs have their figures in summary.json and their plots in the run directory): {e}",
                path.display()
            ))
        })?;
        let metrics = dir.join(METRICS_FILE);
        let mut records = Vec::new();
        for (i, value) in history::read(&metrics)?.records.into_iter().enumerate() {
            let r: LmRecord = serde_json::from_value(value)
                .map_err(|e| run_error(format!("{} line {}: {e}", metrics.display(), i + 1)))?;
            records.push(r);
        }
        let records = latest_history(records);
        let points = records
            .iter()
            .filter_map(|r| r.valid_ppl.map(|p| (r.tokens as f64, p)))
            .collect();
        // The directory names the run: runs of one configuration name (EM's variants, seeds)
        // would share a label.
        let label = dir
            .file_name()
            .map_or_else(|| s.name.clone(), |f| f.to_string_lossy().into_owned());
        curves.push(Curve { label, points });
        results.push(RunResult::new(dir, &s, &records));
        histories.push(records);
        rows.push(s);
    }
    let last_epoch: Vec<f64> = rows.iter().map(|s| s.epochs as f64 - 1.0).collect();
    let noise = loss_noise(&histories, &last_epoch);
    let mut md = String::from(
        "| run | name | algorithm | M, K | hidden | epochs | valid ppl | test ppl | test ppl, filtered mixture (modules/token) | test ppl, posterior routes | parameters | MFLOP/token | tokens/s | effective modules | controller NLL per slot | coverage | last-epoch change of valid ppl | train-loss noise |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((s, noise), res) in rows.iter().zip(&noise).zip(&results) {
        let mk = match (s.modules, s.k) {
            (Some(m), Some(k)) => format!("{m}, {k}"),
            _ => "-".into(),
        };
        let mixture = match (res.test_ppl_mixture, res.mixture_routes) {
            (Some(p), Some(r)) => format!("{p:.1} ({r})"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {mk} | {} | {}{} | {:.1} | {:.1} | {mixture} | {} | {:.2}M | {:.2} | {:.0} | {} | {} | {} | {} | {} |\n",
            res.run,
            s.name,
            s.algo,
            s.hidden,
            s.epochs,
            if s.finished { "" } else { " (stopped)" },
            s.valid_ppl,
            s.test_ppl,
            cell(res.test_ppl_posterior, 1),
            s.parameters as f64 / 1e6,
            s.flops_per_token as f64 / 1e6,
            s.tokens_per_s,
            cell(s.effective_modules, 2),
            cell(res.ctrl_nll, 3),
            cell(res.coverage, 3),
            cell(res.last_epoch_slope, 1),
            cell(*noise, 3),
        ));
    }
    md.push_str(&seed_table(&results, &configs));
    let out_dir = RunDir::take(out)?;
    let out = out_dir.path();
    let figures = lm_plot::curves(out, &curves).map_err(run_error)?;
    files::write_report(out, &md, json, &results, &figures)
}

/// Groups runs whose configurations differ in nothing that changes what is trained but the
/// seed (a run's name leaves out EM's options, initialisation and the like, so two runs of
/// one name may be different experiments): each group lists the indices of its runs.
fn same_configuration(configs: &[RunConfig]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let joins = |g: &Vec<usize>| {
            configs[g[0]]
                .training_differences(c)
                .iter()
                .all(|d| d.field == "seed")
        };
        match groups.iter_mut().find(|g| joins(g)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Mean and spread over the seeds of every configuration run with more than one seed (see
/// [`same_configuration`]), as a second markdown table; empty when there is none.
fn seed_table(results: &[RunResult], configs: &[RunConfig]) -> String {
    let mut md = String::new();
    for group in same_configuration(configs).iter().filter(|g| g.len() > 1) {
        let runs: Vec<&RunResult> = group.iter().map(|&i| &results[i]).collect();
        let dirs: Vec<&str> = runs.iter().map(|r| r.run.as_str()).collect();
        let name = format!("{} ({})", runs[0].name, dirs.join(", "));
        if md.is_empty() {
            md.push_str("\n| configuration | seeds | test ppl (mean ± half range, min-max) | test ppl, filtered mixture | effective modules | controller NLL per slot |\n|---|---|---|---|---|---|\n");
        }
        let seeds: Vec<String> = runs.iter().map(|r| r.seed.to_string()).collect();
        let col = |f: fn(&RunResult) -> Option<f64>, d| {
            mean_spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
        };
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            seeds.join(", "),
            col(|r| Some(r.test_ppl), 1),
            col(|r| r.test_ppl_mixture, 1),
            col(|r| r.effective_modules, 2),
            col(|r| r.ctrl_nll, 3),
        ));
    }
    md
}

/// The records of the run's surviving history: a run resumed from an earlier checkpoint
/// logs the windows after it again, and those later records replace the earlier ones from
/// that step on.
fn latest_history(records: Vec<LmRecord>) -> Vec<LmRecord> {
    let mut kept: Vec<LmRecord> = Vec::with_capacity(records.len());
    for r in records {
        while kept.last().is_some_and(|last| last.step >= r.step) {
            kept.pop();
        }
        kept.push(r);
    }
    kept
}

/// How noisy each run's training was after epoch `from[run]` (the report passes the start of
/// its last epoch), with what the text itself does taken out. Every run reads the same windows
/// in the same order, so the training loss of all of them jumps together where the text gets
/// harder; subtracting the mean loss of the report's runs at each logged step leaves each
/// run's own fluctuations. The figure is the standard deviation of that residual's change from
/// one logging interval to the next (nats per token): near 0 for a run that moves with the
/// others, larger for a high-variance gradient estimator. Records without a training loss
/// (none are written today) are skipped. `None` for a run with fewer than three residuals, or when the report
/// has a single run (nothing to compare with).
fn loss_noise(histories: &[Vec<LmRecord>], from: &[f64]) -> Vec<Option<f64>> {
    let mut by_step: std::collections::BTreeMap<u64, (f64, usize)> = Default::default();
    for r in histories.iter().flatten() {
        if let Some(nll) = r.train_nll {
            let e = by_step.entry(r.step).or_default();
            *e = (e.0 + nll, e.1 + 1);
        }
    }
    histories
        .iter()
        .zip(from)
        .map(|(records, &from)| {
            let residuals: Vec<f64> = records
                .iter()
                .filter(|r| r.epoch > from)
                .filter_map(|r| {
                    // Every logged loss is in `by_step`; a record without one has no residual.
                    let nll = r.train_nll?;
                    let (sum, n) = by_step[&r.step];
                    (n > 1).then(|| nll - sum / n as f64)
                })
                .collect();
            std_dev(residuals.windows(2).map(|w| w[1] - w[0]))
        })
        .collect()
}

/// Sample standard deviation; `None` below two values.
fn std_dev(values: impl Iterator<Item = f64>) -> Option<f64> {
    let values: Vec<f64> = values.collect();
    if values.len() < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    Some(var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, epoch: f64, train_nll: f64) -> LmRecord {
        LmRecord {
            step,
            epoch,
            tokens: step * 1000,
            train_nll: Some(train_nll),
            ..LmRecord::default()
        }
    }

    #[test]
    fn noise_is_what_a_run_does_apart_from_the_others() {
        // Both runs follow the same text-driven ups and downs; the second adds alternating
        // +0.1 / -0.1 jumps of its own.
        let text = |i: u64| if i.is_multiple_of(3) { 0.5 } else { 0.0 };
        let calm: Vec<_> = (0..9).map(|i| record(i, i as f64, 5.0 + text(i))).collect();
        let jumpy: Vec<_> = (0..9)
            .map(|i| {
                record(
                    i,
                    i as f64,
                    6.0 + text(i) + if i.is_multiple_of(2) { 0.1 } else { -0.1 },
                )
            })
            .collect();
        let noise = loss_noise(&[calm, jumpy], &[-1.0, -1.0]);
        // The mean removes half of the jumps from each run: residuals alternate by +-0.05, so
        // their changes are +-0.1 about a mean of 0 (8 changes, sample deviation).
        let n: f64 = 8.0;
        let expected = (0.01 * n / (n - 1.0)).sqrt();
        for got in &noise {
            assert!((got.unwrap() - expected).abs() < 1e-9, "{noise:?}");
        }
        // Only records after `from` count, and two residuals (one change) are not enough.
        let one: Vec<_> = (0..9).map(|i| record(i, i as f64, 5.0)).collect();
        let two = one.clone();
        assert_eq!(
            loss_noise(&[one.clone(), two], &[6.5, 6.5]),
            vec![None, None]
        );
        // A lone run has nothing to be compared with.
        assert_eq!(loss_noise(std::slice::from_ref(&one), &[-1.0]), vec![None]);
        // A record without a training loss, at a step no run logged one, is skipped.
        let mut gap = one.clone();
        gap.push(LmRecord {
            train_nll: None,
            ..record(9, 9.0, 0.0)
        });
        assert_eq!(
            loss_noise(&[gap, one], &[-1.0, -1.0]),
            vec![Some(0.0), Some(0.0)]
        );
    }

    #[test]
    fn runs_group_by_everything_trained_but_the_seed() {
        let config = |extra: &str| {
            RunConfig::parse(
                &format!("task_name = \"ptb\"\n{extra}\n[train]\ne_every = 1\n"),
                "test",
            )
            .unwrap()
        };
        let configs = [
            config("seed = 0"),
            config("seed = 1\nthreads = 2"),
            config("seed = 0\n[model]\nmodule_init_scale = 3.0"),
            config("seed = 2"),
        ];
        // Same name, other initialisation: a different experiment, not another seed; a
        // thread count is not part of what is trained.
        assert_eq!(same_configuration(&configs), vec![vec![0, 1, 3], vec![2]]);
    }

    #[test]
    fn a_rewound_history_keeps_the_later_records() {
        let records = vec![
            record(10, 0.1, 5.0),
            record(20, 0.2, 4.0),
            record(30, 0.3, 3.0),
            record(20, 0.2, 4.5),
            record(30, 0.3, 4.4),
        ];
        let kept = latest_history(records);
        let steps: Vec<_> = kept
            .iter()
            .map(|r| (r.step, r.train_nll.unwrap()))
            .collect();
        assert_eq!(steps, vec![(10, 5.0), (20, 4.5), (30, 4.4)]);
    }
}
