//! The report over image runs (`modula report RUN...` when the runs are `fashion-mnist`,
//! `mnist-10k` or `cifar-10` runs): the accuracy table with each run's train/test gap, the
//! ReLU networks' sparsity table with the sparse dispatch's timing, the measured cost of EM
//! against the compute-matched dense net beside the FLOP prediction, the accuracy curves, the
//! class-by-module heat map of the first modular run and the sparsity figure.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::RunConfig;
use crate::dir::{METRICS_FILE, RunDir, SUMMARY_FILE};
use crate::error::{RunError, run_error};
use crate::plot::images::{self as plot, SparsityPoint};
use crate::records::{ImageRecord, ImageSummary};
use crate::{files, history};

/// One image run's figures as `results.json` lists them (`modula report --json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageResult {
    /// The run directory.
    pub run: String,
    /// The run's name.
    pub name: String,
    /// The task.
    pub task: String,
    /// `"conv"` or `"mlp"`.
    pub model: String,
    /// The algorithm.
    pub algo: String,
    /// What a dense conv net is matched to (`"compute"` or `"params"`).
    pub dense_match: Option<String>,
    /// The seed.
    pub seed: u64,
    /// The share of the training split the run used.
    pub train_fraction: f64,
    /// Training images.
    pub train_examples: usize,
    /// L1 strength on the hidden activations (the ReLU network).
    pub l1_activations: f32,
    /// L1 strength on the weights (the ReLU network).
    pub l1_weights: f32,
    /// Group-sparsity strength over fixed blocks of neurons (the ReLU network).
    pub l1_groups: f32,
    /// Neurons per block of the group penalty (only with `l1_groups`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l1_group_size: Option<usize>,
    /// Epochs trained.
    pub epochs: f64,
    /// Iterations trained.
    pub steps: u64,
    /// Whether the run trained everything it was configured for.
    pub finished: bool,
    /// Accuracy on the whole training set (greedy routes).
    pub train_accuracy: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// `train_accuracy - test_accuracy`.
    pub gap: f64,
    /// Mean test cross-entropy.
    pub test_nll: f64,
    /// `exp` of the entropy of the first modular layer's test usage.
    pub effective_modules: Option<f64>,
    /// Trainable scalars.
    pub parameters: usize,
    /// FLOPs of one image's forward pass.
    pub flops_per_image: u64,
    /// FLOPs one trained image costs under the run's schedule (E-steps included).
    pub flops_per_trained_image: Option<f64>,
    /// Trained images per second, E-steps included.
    pub images_per_s: f64,
    /// Per hidden layer, the fraction of exact zeros on the test set.
    pub zero_fraction: Vec<f64>,
    /// Per hidden layer, the fraction of all-zero blocks of 32 activations per example.
    pub block_zero_fraction: Vec<f64>,
    /// The ReLU network: the share of training's layer passes that took the sparse products.
    pub sparse_share: Option<f64>,
    /// The ReLU network: seconds per training epoch with the sparse dispatch on.
    pub train_s_per_epoch_sparse: Option<f64>,
    /// The same with the sparse dispatch off.
    pub train_s_per_epoch_dense: Option<f64>,
    /// The ReLU network: seconds of inference over an epoch with the sparse dispatch on.
    pub infer_s_per_epoch_sparse: Option<f64>,
    /// The same with the sparse dispatch off.
    pub infer_s_per_epoch_dense: Option<f64>,
    /// The ReLU network: the share of the products an ideal sparse implementation saves at
    /// the measured test density.
    pub ideal_saving: Option<f64>,
}

impl ImageResult {
    fn new(dir: &Path, s: &ImageSummary, train_fraction: f64) -> Self {
        let t = s.timing.as_ref();
        ImageResult {
            run: dir.display().to_string(),
            name: s.name.clone(),
            task: s.task.clone(),
            model: s.model.clone(),
            algo: s.algo.clone(),
            dense_match: s.dense_match.clone(),
            seed: s.seed,
            train_fraction,
            train_examples: s.train_examples,
            l1_activations: s.l1_activations,
            l1_weights: s.l1_weights,
            l1_groups: s.l1_groups,
            l1_group_size: s.l1_group_size,
            epochs: s.epochs,
            steps: s.steps,
            finished: s.finished,
            train_accuracy: s.train_accuracy,
            test_accuracy: s.test_accuracy,
            gap: s.gap,
            test_nll: s.test_nll,
            effective_modules: s.effective_modules,
            parameters: s.parameters,
            flops_per_image: s.flops_per_image,
            flops_per_trained_image: s.flops_per_trained_image,
            images_per_s: s.images_per_s,
            zero_fraction: s.zero_fraction.clone(),
            block_zero_fraction: s.block_zero_fraction.clone(),
            sparse_share: s.sparse_share,
            train_s_per_epoch_sparse: t.map(|t| t.train_s_per_epoch_sparse),
            train_s_per_epoch_dense: t.map(|t| t.train_s_per_epoch_dense),
            infer_s_per_epoch_sparse: t.map(|t| t.infer_s_per_epoch_sparse),
            infer_s_per_epoch_dense: t.map(|t| t.infer_s_per_epoch_dense),
            ideal_saving: s.ideal_saving,
        }
    }

    /// The algorithm with the dense match, as the tables spell it.
    fn algorithm(&self) -> String {
        match &self.dense_match {
            Some(m) => format!("{} ({m})", self.algo),
            None => self.algo.clone(),
        }
    }
}

/// Values with three decimals, joined by `/`, or `-` when there are none.
fn fractions(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn cell(a: Option<f64>, digits: usize) -> String {
    a.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

/// Tabulates the image runs `runs` (with their configurations `configs`) into
/// `out/report.md`, draws their accuracy curves, the first modular run's class-by-module heat
/// map and the ReLU networks' sparsity against L1 strength, and prints the tables; with
/// `json`, also writes every run's figures there (see [`ImageResult`]).
///
/// # Errors
/// A run error naming a run without a readable summary or metrics, or a failed write.
pub fn report(
    runs: &[PathBuf],
    configs: &[RunConfig],
    out: &Path,
    json: Option<&Path>,
) -> Result<(), RunError> {
    let mut summaries = Vec::new();
    let mut results = Vec::new();
    let mut curves = Vec::new();
    for (dir, cfg) in runs.iter().zip(configs) {
        let RunConfig::Image(run) = cfg else {
            return Err(run_error(format!(
                "{} is not an image run; `modula report` tabulates runs of one kind (image runs, or language-modelling runs) at a time",
                dir.display()
            )));
        };
        let path = dir.join(SUMMARY_FILE);
        let text = files::read_limited(&path, files::SUMMARY_LIMIT).map_err(|e| {
            run_error(format!(
                "cannot read {}: {e} (a run writes it when it stops; finish or resume the run)",
                path.display()
            ))
        })?;
        let s: ImageSummary = serde_json::from_slice(&text)
            .map_err(|e| run_error(format!("{} is not an image summary: {e}", path.display())))?;
        let metrics = dir.join(METRICS_FILE);
        let mut records = Vec::new();
        for (i, value) in history::read(&metrics)?.records.into_iter().enumerate() {
            let r: ImageRecord = serde_json::from_value(value)
                .map_err(|e| run_error(format!("{} line {}: {e}", metrics.display(), i + 1)))?;
            // A run resumed from an earlier checkpoint logs the steps after it again; the
            // later records replace the earlier ones.
            while records
                .last()
                .is_some_and(|last: &ImageRecord| last.step >= r.step)
            {
                records.pop();
            }
            records.push(r);
        }
        let label = dir
            .file_name()
            .map_or_else(|| s.name.clone(), |f| f.to_string_lossy().into_owned());
        if s.model == "conv" {
            curves.push((label, records));
        }
        results.push(ImageResult::new(dir, &s, run.task.train_fraction));
        summaries.push(s);
    }
    let mut md = accuracy_table(&results);
    md.push_str(&cost_table(&results));
    md.push_str(&sparsity_table(&results));
    let out_dir = RunDir::take(out)?;
    let out = out_dir.path();
    let mut figures = Vec::new();
    if !curves.is_empty() {
        figures.extend(plot::accuracy(out, &curves).map_err(run_error)?);
    }
    // The heat map of the first EM run, else of the first modular run of any algorithm.
    let modular = summaries
        .iter()
        .find(|s| s.algo == "em" && s.modules.is_some())
        .or_else(|| summaries.iter().find(|s| s.modules.is_some()));
    if let Some(s) = modular {
        figures.extend(plot::class_modules(out, s).map_err(run_error)?);
    }
    let mut points: Vec<SparsityPoint> = results
        .iter()
        .filter(|r| r.model == "mlp" && r.l1_weights == 0.0 && r.l1_groups == 0.0)
        .map(|r| SparsityPoint {
            l1: f64::from(r.l1_activations),
            zero_fraction: r.zero_fraction.clone(),
            test_accuracy: r.test_accuracy,
        })
        .collect();
    points.sort_by(|a, b| a.l1.total_cmp(&b.l1));
    if !points.is_empty() {
        figures.extend(plot::sparsity(out, &points).map_err(run_error)?);
    }
    files::write_report(out, &md, json, &results, &figures)
}

/// One row per run: accuracy on both splits, the gap, module usage and cost.
fn accuracy_table(results: &[ImageResult]) -> String {
    let mut md = String::from(
        "| run | task | model | algorithm | seed | training images | epochs | train accuracy | test accuracy | gap | test NLL | effective modules | parameters | MFLOP/image | images/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2}{} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.3}M | {:.2} | {:.0} |\n",
            r.run,
            r.task,
            r.model,
            r.algorithm(),
            r.seed,
            r.train_examples,
            r.epochs,
            if r.finished { "" } else { " (stopped)" },
            r.train_accuracy,
            r.test_accuracy,
            r.gap,
            r.test_nll,
            cell(r.effective_modules, 2),
            r.parameters as f64 / 1e6,
            r.flops_per_image as f64 / 1e6,
            r.images_per_s,
        ));
    }
    md
}

/// For each modular conv run beside a compute-matched dense conv run of the same task and
/// training set: the measured cost per trained image relative to the dense run's, against the
/// ratio the FLOP counts predict for the run's schedule; empty when there is no such pair.
fn cost_table(results: &[ImageResult]) -> String {
    let mut md = String::new();
    for r in results
        .iter()
        .filter(|r| r.model == "conv" && r.algo != "dense")
    {
        let Some(dense) = results.iter().find(|d| {
            d.model == "conv"
                && d.dense_match.as_deref() == Some("compute")
                && d.task == r.task
                && d.train_examples == r.train_examples
        }) else {
            continue;
        };
        let (Some(mine), Some(theirs)) = (r.flops_per_trained_image, dense.flops_per_trained_image)
        else {
            continue;
        };
        if md.is_empty() {
            md.push_str("\n| run | against | measured cost per trained image (x dense) | predicted from FLOPs (x dense) | measured / predicted |\n|---|---|---|---|---|\n");
        }
        let measured = dense.images_per_s / r.images_per_s.max(1e-9);
        let predicted = mine / theirs.max(1e-9);
        md.push_str(&format!(
            "| {} | {} | {measured:.2} | {predicted:.2} | {:.2} |\n",
            r.run,
            dense.run,
            measured / predicted
        ));
    }
    md
}

/// The ReLU networks: activation and block sparsity per hidden layer, test accuracy, and the
/// sparse dispatch's timing, then the strongest activation L1 within one point of accuracy of
/// the unregularised net of the same task; empty without ReLU networks.
fn sparsity_table(results: &[ImageResult]) -> String {
    let mlps: Vec<&ImageResult> = results.iter().filter(|r| r.model == "mlp").collect();
    if mlps.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n| run | L1 activations | L1 weights | group L1 | test accuracy | zero fraction per layer | all-zero blocks of 32 per layer | sparse share of products | training s/epoch, sparse on / off | inference s/epoch, sparse on / off | ideal saving |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &mlps {
        let pair = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {} | {} | {} | {} | {} | {} |\n",
            r.run,
            r.l1_activations,
            r.l1_weights,
            r.l1_groups,
            r.test_accuracy,
            fractions(&r.zero_fraction),
            fractions(&r.block_zero_fraction),
            cell(r.sparse_share, 3),
            pair(r.train_s_per_epoch_sparse, r.train_s_per_epoch_dense),
            pair(r.infer_s_per_epoch_sparse, r.infer_s_per_epoch_dense),
            cell(r.ideal_saving, 3),
        ));
    }
    for base in mlps
        .iter()
        .filter(|r| r.l1_activations == 0.0 && r.l1_weights == 0.0 && r.l1_groups == 0.0)
    {
        let pick = strongest_within_a_point(base, &mlps);
        md.push_str(&format!(
            "\n{}: the unregularised net's test accuracy is {:.4}; {}\n",
            base.task,
            base.test_accuracy,
            match pick {
                Some(p) => format!(
                    "the strongest activation L1 within 1 point of it is {} ({}: test accuracy {:.4}, zero fraction {})",
                    p.l1_activations,
                    p.run,
                    p.test_accuracy,
                    fractions(&p.zero_fraction)
                ),
                None => "no regularised run is within 1 point of it".into(),
            }
        ));
    }
    md
}

/// Among the activation-only L1 runs of `base`'s task and training set, the one with the
/// largest strength whose test accuracy is at most one point below `base`'s.
fn strongest_within_a_point<'a>(
    base: &ImageResult,
    runs: &[&'a ImageResult],
) -> Option<&'a ImageResult> {
    runs.iter()
        .copied()
        .filter(|r| {
            r.task == base.task
                && r.train_examples == base.train_examples
                && r.l1_weights == 0.0
                && r.l1_groups == 0.0
                && r.l1_activations > 0.0
                && r.test_accuracy >= base.test_accuracy - 0.01
        })
        .max_by(|a, b| a.l1_activations.total_cmp(&b.l1_activations))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp(l1: f32, accuracy: f64) -> ImageResult {
        ImageResult {
            run: format!("l1-{l1}"),
            name: String::new(),
            task: "fashion-mnist".into(),
            model: "mlp".into(),
            algo: "dense".into(),
            dense_match: None,
            seed: 0,
            train_fraction: 1.0,
            train_examples: 60_000,
            l1_activations: l1,
            l1_weights: 0.0,
            l1_groups: 0.0,
            l1_group_size: None,
            epochs: 1.0,
            steps: 1,
            finished: true,
            train_accuracy: accuracy,
            test_accuracy: accuracy,
            gap: 0.0,
            test_nll: 0.0,
            effective_modules: None,
            parameters: 0,
            flops_per_image: 0,
            flops_per_trained_image: None,
            images_per_s: 0.0,
            zero_fraction: Vec::new(),
            block_zero_fraction: Vec::new(),
            sparse_share: None,
            train_s_per_epoch_sparse: None,
            train_s_per_epoch_dense: None,
            infer_s_per_epoch_sparse: None,
            infer_s_per_epoch_dense: None,
            ideal_saving: None,
        }
    }

    #[test]
    fn the_pick_is_the_strongest_l1_within_a_point() {
        let base = mlp(0.0, 0.89);
        let runs = [
            mlp(1e-5, 0.889),
            mlp(1e-4, 0.8805),
            mlp(1e-3, 0.8799),
            mlp(1e-2, 0.70),
        ];
        let refs: Vec<&ImageResult> = runs.iter().collect();
        let pick = strongest_within_a_point(&base, &refs).unwrap();
        assert_eq!(pick.l1_activations, 1e-4);
        // Another task's runs are not candidates.
        let mut other = mlp(1e-3, 0.95);
        other.task = "mnist-10k".into();
        assert!(strongest_within_a_point(&base, &[&other]).is_none());
        // Nor is a run with the group penalty as well: the pick is about activation L1 alone.
        let mut grouped = mlp(1e-3, 0.8899);
        grouped.l1_groups = 1e-3;
        assert!(strongest_within_a_point(&base, &[&grouped]).is_none());
    }
}
