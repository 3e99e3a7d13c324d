//! The files a run writes, as types: the lines of `metrics.jsonl` and `summary.json` of toy
//! runs ([`MetricRecord`], [`Summary`], [`Figures`]) and of language-modelling runs
//! ([`LmRecord`], [`LmSummary`]), read back by plots, reports and introspection.

use modula_tasks::ToyEval;
use serde::{Deserialize, Serialize};

use crate::dir::DeviceInfo;

/// One line of a toy run's `metrics.jsonl`: the training statistics of a logging interval and
/// the test figures at its end. Means over an interval without gradient steps are `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Iterations completed.
    pub step: u64,
    /// Mean task NLL `-log p(y | x, a)` over the interval's gradient steps.
    pub task_nll: Option<f64>,
    /// Mean controller NLL `-log p(a | x)` over the interval's gradient steps.
    pub ctrl_nll: Option<f64>,
    /// `exp` of the mean controller entropy over the interval.
    pub controller_perplexity: Option<f64>,
    /// `exp` of the entropy of the batch-averaged controller distribution.
    pub batch_perplexity: Option<f64>,
    /// Per layer, how many training rows each module served during the interval.
    pub usage: Vec<Vec<u64>>,
    /// Fraction of `a*` changed by the latest E-step (EM only).
    pub changed: Option<f64>,
    /// Training examples per second over the interval's steps.
    pub examples_per_s: f64,
    /// Test mean squared error at the end of the interval.
    pub test_mse: f64,
    /// Test NLL at the end of the interval.
    pub test_nll: f64,
    /// Test purity at the end of the interval.
    pub purity: f64,
    /// Effective modules (greedy, test) at the end of the interval.
    pub effective_modules: f64,
}

/// The figures of a greedy evaluation on the test split, as `summary.json` and
/// `modula eval --json` print them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The test loss: mean squared error on the test split.
    pub test_loss: f64,
    /// Mean `-log p(y | x, a)` on the test split.
    pub test_nll: f64,
    /// Fraction of test points whose greedy module is the majority module of their regime.
    pub purity: f64,
    /// `exp` of the entropy of the first layer's greedy usage.
    pub effective_modules: f64,
    /// `exp` of the controllers' mean entropy on the test split.
    pub controller_perplexity: f64,
    /// Per layer, how many test points each module served.
    pub usage: Vec<Vec<u64>>,
    /// Test MSE of the best single linear map, the yardstick.
    pub linear_baseline_mse: f64,
}

impl Figures {
    /// The figures of an evaluation and the task's linear baseline.
    pub fn new(eval: &ToyEval, linear_baseline_mse: f64) -> Self {
        Figures {
            test_loss: eval.test_mse,
            test_nll: eval.test_nll,
            purity: eval.purity,
            effective_modules: eval.effective_modules,
            controller_perplexity: eval.controller_perplexity,
            usage: eval.usage.clone(),
            linear_baseline_mse,
        }
    }

    /// The figures as two human-readable lines.
    pub fn text(&self) -> String {
        format!(
            "test MSE {:.4} (linear baseline {:.4}), test NLL {:.4}\npurity {:.4}, effective modules {:.2}, controller perplexity {:.2}, usage {:?}",
            self.test_loss,
            self.linear_baseline_mse,
            self.test_nll,
            self.purity,
            self.effective_modules,
            self.controller_perplexity,
            self.usage.first().cloned().unwrap_or_default()
        )
    }
}

/// A toy run's `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The task's name.
    pub task: String,
    /// The algorithm's name.
    pub algo: String,
    /// Iterations completed.
    pub steps: u64,
    /// Seconds of training steps, over all resumed parts.
    pub seconds: f64,
    /// The run's seed.
    pub seed: u64,
    /// CPU backend threads (recorded on every backend; only the CPU uses them).
    pub threads: usize,
    /// The backend, and for wgpu the adapter's name and device type.
    #[serde(flatten)]
    pub device: DeviceInfo,
    /// Trainable scalars of the network.
    pub parameters: usize,
    /// The test figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One line of `metrics.jsonl` of a language-modelling run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LmRecord {
    /// Windows trained.
    pub step: u64,
    /// Epochs completed plus the fraction of the current one.
    pub epoch: f64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Mean training NLL per token over the interval (nats, with dropout).
    pub train_nll: Option<f64>,
    /// Mean `-log p(a_t | .)` over the interval.
    pub ctrl_nll: Option<f64>,
    /// `exp` of the mean controller entropy over the interval.
    pub controller_perplexity: Option<f64>,
    /// `exp` of the entropy of the window-averaged controller distribution.
    pub batch_perplexity: Option<f64>,
    /// How many (position, slot) pairs each module served during the interval.
    pub usage: Vec<u64>,
    /// Fraction of the window's `a*` changed by the interval's last E-step (EM).
    pub changed: Option<f64>,
    /// Mean fraction of `a*` changed over the interval's E-steps (EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_mean: Option<f64>,
    /// Share of the training positions any E-step has visited so far (EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// Training tokens per second over the interval (training windows only).
    pub tokens_per_s: f64,
    /// Validation perplexity, at evaluation points.
    pub valid_ppl: Option<f64>,
    /// The evaluations at the end of every epoch (absent from other records).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub epoch_end: Option<EpochEnd>,
}

/// What a language-modelling run measures at the end of each epoch, besides the greedy
/// validation perplexity every evaluation has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochEnd {
    /// Test perplexity, greedy routes (compute proportional to K).
    pub test_ppl: f64,
    /// `exp` of the entropy of the test split's greedy module usage (absent for dense).
    pub effective_modules: Option<f64>,
    /// The filtered-mixture and posterior evaluations (controller-routed modular models).
    #[serde(flatten)]
    pub filtered: Option<Filtered>,
}

/// The filtered-mixture and posterior perplexities of both held-out splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Filtered {
    /// Validation perplexity under the filtered mixture (a valid causal score).
    pub valid_ppl_mixture: f64,
    /// Test perplexity under the filtered mixture.
    pub test_ppl_mixture: f64,
    /// Validation perplexity along the committed posterior routes (a diagnostic only).
    pub valid_ppl_posterior: f64,
    /// Test perplexity along the committed posterior routes.
    pub test_ppl_posterior: f64,
    /// Routes the mixture scores per token: its compute, in modules, per token.
    pub mixture_routes: usize,
}

/// `summary.json` of a language-modelling run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmSummary {
    /// `"ptb"` or `"text"`.
    pub task: String,
    /// The algorithm.
    pub algo: String,
    /// What a dense run is matched to (`"compute"` or `"params"`; absent for other runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_match: Option<String>,
    /// The run's name (algorithm and configuration).
    pub name: String,
    /// `M` and `K` of the modular layer (`None` for dense).
    pub modules: Option<usize>,
    /// Modules per step.
    pub k: Option<usize>,
    /// GRU hidden width.
    pub hidden: usize,
    /// Whether every configured epoch was trained.
    pub finished: bool,
    /// Epochs completed.
    pub epochs: usize,
    /// Windows trained.
    pub steps: u64,
    /// Training tokens seen.
    pub tokens_seen: u64,
    /// Seconds spent in training windows (E-steps included, evaluations excluded).
    pub train_seconds: f64,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Trainable scalars.
    pub parameters: usize,
    /// FLOPs of one forward pass per token (2 x multiply-adds of the products).
    pub flops_per_token: u64,
    /// Validation and test tokens scored (all of each split unless `train.eval_tokens` cut
    /// them short; absent in summaries written before it was recorded, which scored all).
    #[serde(default)]
    pub eval_tokens: Option<[usize; 2]>,
    /// Validation perplexity (greedy selections).
    pub valid_ppl: f64,
    /// Test perplexity (greedy selections).
    pub test_ppl: f64,
    /// `exp` of the entropy of the test set's module usage (1 means collapse).
    pub effective_modules: Option<f64>,
    /// Test-set module usage ((position, slot) pairs per module).
    pub test_usage: Vec<u64>,
    /// The filtered-mixture and posterior perplexities (controller-routed modular models).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub filtered: Option<Filtered>,
    /// Mean controller NLL `-log p(a* | .)` per slot over the last epoch's records (EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrl_nll_slot: Option<f64>,
    /// Mean fraction of `a*` an E-step changed over the last epoch's records (EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_changed: Option<f64>,
    /// Share of the training positions any E-step has visited (EM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// The run's seed.
    pub seed: u64,
    /// CPU threads.
    pub threads: usize,
    /// The backend.
    #[serde(flatten)]
    pub device: DeviceInfo,
}
