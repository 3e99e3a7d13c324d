//! `modula report RUN...`: the PTB experiment's table (one row per run) and its validation
//! curves in one figure, from the runs' `summary.json` and `metrics.jsonl`.

use std::path::PathBuf;

use clap::Args;

use crate::lm::{LmRecord, LmSummary};
use crate::lm_plot::{self, Curve};
use crate::run::{CliError, METRICS_FILE, SUMMARY_FILE, run_error};
use crate::train::write_file;

/// Arguments of `modula report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Language-modelling run directories with a `summary.json`.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Where to write report.md and curves.png/svg.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `modula report`.
///
/// # Errors
/// A [`CliError`] naming a run without a readable summary or metrics, or a failed write.
pub fn run(args: ReportArgs) -> Result<(), CliError> {
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for dir in &args.runs {
        let path = dir.join(SUMMARY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            run_error(format!(
                "cannot read {}: {e} (a run writes it when it stops; finish or resume the run)",
                path.display()
            ))
        })?;
        let s: LmSummary = serde_json::from_str(&text).map_err(|e| {
            run_error(format!(
                "{} is not a language-modelling summary: {e}",
                path.display()
            ))
        })?;
        let metrics = dir.join(METRICS_FILE);
        let text = std::fs::read_to_string(&metrics)
            .map_err(|e| run_error(format!("cannot read {}: {e}", metrics.display())))?;
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let r: LmRecord = serde_json::from_str(line)
                .map_err(|e| run_error(format!("{} line {}: {e}", metrics.display(), i + 1)))?;
            if let Some(p) = r.valid_ppl {
                points.push((r.tokens as f64, p));
            }
        }
        curves.push(Curve {
            label: s.name.clone(),
            points,
        });
        rows.push(s);
    }
    let mut md = String::from(
        "| run | algorithm | M, K | hidden | epochs | valid ppl | test ppl | parameters | MFLOP/token | tokens/s | effective modules |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &rows {
        let mk = match (s.modules, s.k) {
            (Some(m), Some(k)) => format!("{m}, {k}"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {mk} | {} | {}{} | {:.1} | {:.1} | {:.2}M | {:.2} | {:.0} | {} |\n",
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
        ));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| run_error(format!("cannot create {}: {e}", args.out.display())))?;
    write_file(&args.out.join("report.md"), &md)?;
    let figures = lm_plot::curves(&args.out, &curves).map_err(run_error)?;
    print!("{md}");
    println!(
        "wrote report.md, {} into {}",
        figures.join(", "),
        args.out.display()
    );
    Ok(())
}
