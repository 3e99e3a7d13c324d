//! The report over language-modelling runs (`modula report RUN...`): the table (one row per run) and its validation
//! curves in one figure, from the runs' `summary.json` and `metrics.jsonl`.

use std::path::{Path, PathBuf};

use crate::dir::{METRICS_FILE, RunDir, SUMMARY_FILE};
use crate::error::{RunError, run_error};
use crate::plot::lm::{self as lm_plot, Curve};
use crate::records::{LmRecord, LmSummary};
use crate::{console, files, history};

/// Tabulates the language-modelling runs `runs` into `out/report.md` and draws their
/// validation curves together, printing the table.
///
/// # Errors
/// A run error naming a run without a readable summary or metrics (or a toy run), or a failed
/// write.
pub fn report(runs: &[PathBuf], out: &Path) -> Result<(), RunError> {
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut histories = Vec::new();
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
        curves.push(Curve {
            label: s.name.clone(),
            points,
        });
        histories.push(records);
        rows.push(s);
    }
    let last_epoch: Vec<f64> = rows.iter().map(|s| s.epochs as f64 - 1.0).collect();
    let noise = loss_noise(&histories, &last_epoch);
    let mut md = String::from(
        "| run | algorithm | M, K | hidden | epochs | valid ppl | test ppl | parameters | MFLOP/token | tokens/s | effective modules | train-loss noise |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (s, noise) in rows.iter().zip(&noise) {
        let mk = match (s.modules, s.k) {
            (Some(m), Some(k)) => format!("{m}, {k}"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {mk} | {} | {}{} | {:.1} | {:.1} | {:.2}M | {:.2} | {:.0} | {} | {} |\n",
            s.name,
            s.algo,
            s.hidden,
            s.epochs,
            if s.finished { "" } else { " (stopped)" },
            s.valid_ppl,
            s.test_ppl,
            s.parameters as f64 / 1e6,
            s.flops_per_token as f64 / 1e6,
            s.tokens_per_s,
            s.effective_modules
                .map_or("-".to_string(), |e| format!("{e:.2}")),
            noise.map_or("-".to_string(), |n| format!("{n:.3}")),
        ));
    }
    let out_dir = RunDir::take(out)?;
    let out = out_dir.path();
    files::replace(&out.join("report.md"), "report", md.as_bytes())?;
    let figures = lm_plot::curves(out, &curves).map_err(run_error)?;
    console::print(&format!(
        "{md}wrote report.md, {} into {}\n",
        figures.join(", "),
        out.display()
    ))
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
