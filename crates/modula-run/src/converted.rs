//! The table of converted networks (`modula modularity --converted`): each converted run, or
//! network of groups trained from scratch, or dense control, beside the dense network it is
//! compared with. Apart from `convert` (the conversion itself) so that the analysis reads
//! these results without depending on the conversion.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dir::CONVERT_FILE;
use crate::error::{RunError, run_error};

/// A converted run (or a network of groups trained from scratch) beside the dense network it
/// is compared with, as `modula modularity --converted` tabulates it.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertedResult {
    /// The run directory.
    pub run: String,
    /// `"converted"` (by `modula convert`), `"scratch"` (a network of groups trained from its
    /// seed) or `"dense"` (a dense ReLU run, such as the dense network trained further: a
    /// control for the refinement's extra epochs).
    pub origin: String,
    /// The dense run it was converted from (converted runs).
    pub dense_run: Option<String>,
    /// The partition method (converted runs).
    pub method: Option<String>,
    /// The run's seed.
    pub seed: u64,
    /// Groups per hidden layer, `M`.
    pub modules: usize,
    /// Groups computed per image, `K`.
    pub k: usize,
    /// `K / M`, the share of each hidden layer's FLOPs computed.
    pub k_share: f64,
    /// The algorithm that trained it.
    pub algo: String,
    /// Epochs trained (after the conversion, for a converted run).
    pub epochs: f64,
    /// The dense network's test accuracy (the dense run of the same seed).
    pub dense_test_accuracy: Option<f64>,
    /// Test accuracy at step 0: for a converted run, the converted network before any
    /// refinement.
    pub initial_test_accuracy: Option<f64>,
    /// Test accuracy at the end of the run.
    pub test_accuracy: f64,
    /// Converted runs: the dense accuracy minus the step-0 accuracy (what routing lost).
    pub routing_lost: Option<f64>,
    /// Converted runs: the share of that loss the refinement recovered,
    /// `(final - initial) / (dense - initial)`.
    pub recovered_share: Option<f64>,
    /// FLOPs of one image's forward pass (gates included) over the dense network's.
    pub network_flops_share: Option<f64>,
}

/// Reads the converted (or scratch) group runs `runs` and compares each with the dense run it
/// came from, or else the one of `dense` (directory, seed, test accuracy, FLOPs per image)
/// with its seed.
///
/// # Errors
/// A run error naming a run whose summary, history or conversion record cannot be read, or
/// that is not a network of neuron groups.
pub fn converted_results(
    runs: &[PathBuf],
    dense: &[(String, u64, f64, Option<u64>)],
) -> Result<Vec<ConvertedResult>, RunError> {
    let read = |path: &Path| -> Result<serde_json::Value, RunError> {
        let text = crate::files::read_limited(path, crate::files::SUMMARY_LIMIT)
            .map_err(|e| run_error(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| run_error(format!("{} is not JSON: {e}", path.display())))
    };
    runs.iter()
        .map(|dir| {
            let s = read(&dir.join(crate::dir::SUMMARY_FILE))?;
            let dense_model = s["model"] == "mlp";
            if s["model"] != "groups" && !dense_model {
                return Err(run_error(format!(
                    "{} is neither a network of neuron groups nor a dense ReLU network (model \"{}\"); --converted takes runs written by `modula convert`, trained with model.kind = \"groups\" or \"mlp\"",
                    dir.display(),
                    s["model"].as_str().unwrap_or("?")
                )));
            }
            let conversion = dir.join(CONVERT_FILE);
            let c = conversion.is_file().then(|| read(&conversion)).transpose()?;
            let seed = s["seed"].as_u64().unwrap_or(0);
            let dense_run = c.as_ref().and_then(|c| c["dense_run"].as_str().map(String::from));
            let base = dense
                .iter()
                .find(|d| dense_run.as_deref() == Some(d.0.as_str()))
                .or_else(|| dense.iter().find(|d| d.1 == seed));
            let initial = crate::history::read(&dir.join(crate::dir::METRICS_FILE))?
                .records
                .iter()
                .find(|r| r["step"] == 0)
                .and_then(|r| r["test_accuracy"].as_f64());
            let number = |key: &str| {
                s[key].as_f64().ok_or_else(|| {
                    run_error(format!("{} lacks `{key}`", dir.join("summary.json").display()))
                })
            };
            // A dense network computes its one group.
            let (modules, k) = if dense_model {
                (1, 1)
            } else {
                (number("modules")? as usize, number("k")? as usize)
            };
            let test_accuracy = number("test_accuracy")?;
            let dense_accuracy = base.map(|d| d.2);
            let lost = c
                .as_ref()
                .and(dense_accuracy.zip(initial))
                .map(|(d, i)| d - i);
            Ok(ConvertedResult {
                run: dir.display().to_string(),
                origin: match (&c, dense_model) {
                    (Some(_), _) => "converted",
                    (None, true) => "dense",
                    (None, false) => "scratch",
                }
                .into(),
                dense_run,
                method: c.as_ref().and_then(|c| c["method"].as_str().map(String::from)),
                seed,
                modules,
                k,
                k_share: k as f64 / modules.max(1) as f64,
                algo: s["algo"].as_str().unwrap_or("?").into(),
                epochs: number("epochs")?,
                dense_test_accuracy: dense_accuracy,
                initial_test_accuracy: initial,
                test_accuracy,
                routing_lost: lost,
                recovered_share: lost
                    .zip(initial)
                    .filter(|(l, _)| *l > 0.0)
                    .map(|(l, i)| (test_accuracy - i) / l),
                network_flops_share: base
                    .and_then(|d| d.3)
                    .zip(s["flops_per_image"].as_u64())
                    .map(|(d, f)| f as f64 / d as f64),
            })
        })
        .collect()
}

/// The markdown table of `results`.
pub fn converted_table(results: &[ConvertedResult]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.4}", v));
    let mut md = String::from(
        "\n| run | origin | seed | K / M | algo | epochs | dense | step 0 | end | routing lost (points) | recovered | network FLOPs |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {}/{} | {} | {:.1} | {} | {} | {:.4} | {} | {} | {} |\n",
            r.run,
            r.origin,
            r.seed,
            r.k,
            r.modules,
            r.algo,
            r.epochs,
            pct(r.dense_test_accuracy),
            pct(r.initial_test_accuracy),
            r.test_accuracy,
            r.routing_lost
                .map_or("-".into(), |l| format!("{:.2}", 100.0 * l)),
            r.recovered_share
                .map_or("-".into(), |s| format!("{:.0}%", 100.0 * s)),
            r.network_flops_share
                .map_or("-".into(), |s| format!("{:.3}", s)),
        ));
    }
    md
}
