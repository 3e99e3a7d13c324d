//! The files a run writes, as types: the lines of `metrics.jsonl` and `summary.json` of toy
//! runs ([`MetricRecord`], [`Summary`], [`Figures`]), of language-modelling runs
//! ([`LmRecord`], [`LmSummary`]) and of image runs ([`ImageRecord`], [`ImageSummary`]), read
//! back by plots, reports and introspection.

use modula_tasks::{DispatchTiming, ToyEval};
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

/// One line of `metrics.jsonl` of an image run: the training statistics of a logging interval
/// and, at evaluation points, the greedy figures on both splits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Iterations completed.
    pub step: u64,
    /// Epochs completed plus the fraction of the current one.
    pub epoch: f64,
    /// Mean training cross-entropy over the interval's gradient steps (nats).
    pub train_loss: Option<f64>,
    /// Mean controller NLL `-log p(a | x)` over the interval's gradient steps.
    pub ctrl_nll: Option<f64>,
    /// `exp` of the mean controller entropy over the interval.
    pub controller_perplexity: Option<f64>,
    /// Per modular layer, how many training examples each module served during the interval.
    pub usage: Vec<Vec<u64>>,
    /// Fraction of `a*` changed by the latest E-step (EM).
    pub changed: Option<f64>,
    /// Training examples per second over the interval (E-steps included in the time).
    pub examples_per_s: f64,
    /// Seconds of training iterations in the interval.
    pub seconds: f64,
    /// ReLU network: the interval's layer passes that took the sparse products, and all of
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_passes: Option<[u64; 2]>,
    /// The evaluations, at evaluation points.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalPoint>,
}

/// What an image run's periodic evaluation measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Accuracy on the fixed training subset `train.eval_train_examples`.
    pub train_accuracy: f64,
    /// Mean cross-entropy on it.
    pub train_nll: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Mean test cross-entropy.
    pub test_nll: f64,
    /// `exp` of the entropy of the first modular layer's greedy test usage.
    pub effective_modules: Option<f64>,
    /// Per hidden layer, the fraction of exact zeros on the test set.
    pub zero_fraction: Vec<f64>,
    /// Per hidden layer, the fraction of all-zero blocks of 32 activations per example.
    pub block_zero_fraction: Vec<f64>,
}

/// `summary.json` of an image run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSummary {
    /// `"fashion-mnist"`, `"mnist-10k"` or `"cifar-10"`.
    pub task: String,
    /// The network: `"conv"` or `"mlp"`.
    pub model: String,
    /// The algorithm.
    pub algo: String,
    /// What a dense run is matched to (`"compute"` or `"params"`; absent for other runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_match: Option<String>,
    /// The run's name.
    pub name: String,
    /// Modules per layer (absent for dense and the ReLU network).
    pub modules: Option<usize>,
    /// Modules evaluated per image and layer.
    pub k: Option<usize>,
    /// The convolution layers' output channels (the conv net; widened for a
    /// parameter-matched dense baseline).
    pub channels: Option<Vec<usize>>,
    /// The hidden widths (the ReLU network).
    pub hidden: Option<Vec<usize>>,
    /// L1 strength on the hidden activations.
    pub l1_activations: f32,
    /// L1 strength on the weights.
    pub l1_weights: f32,
    /// Group-sparsity strength over fixed blocks of neurons (absent from summaries written
    /// before it existed: 0).
    #[serde(default)]
    pub l1_groups: f32,
    /// Neurons per block of the group penalty (only with `l1_groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_group_size: Option<usize>,
    /// Whether the ReLU network's products could take the sparse path.
    pub sparse_dispatch: Option<bool>,
    /// Whether every configured epoch (or step) was trained.
    pub finished: bool,
    /// Epochs completed (with the fraction of the current one).
    pub epochs: f64,
    /// Iterations trained.
    pub steps: u64,
    /// Training examples in the run's training set.
    pub train_examples: usize,
    /// Test examples.
    pub test_examples: usize,
    /// Seconds spent in training iterations (E-steps included, evaluations excluded).
    pub train_seconds: f64,
    /// Seconds of each whole epoch trained, from the records.
    pub epoch_seconds: Vec<f64>,
    /// Trained images per second of training iterations (E-steps included).
    pub images_per_s: f64,
    /// Trainable scalars.
    pub parameters: usize,
    /// FLOPs of one image's forward pass (2 per multiply-add; every product counted dense).
    pub flops_per_image: u64,
    /// EM's E-step schedule: candidates per example, and the period (an E-step replaces every
    /// `e_every`-th iteration).
    pub e_step: Option<[usize; 2]>,
    /// FLOPs one trained image costs under the schedule: 3 forward passes, plus under EM
    /// `samples / (e_every - 1)` more for the E-steps.
    pub flops_per_trained_image: Option<f64>,
    /// Accuracy on the whole training set (greedy routes).
    pub train_accuracy: f64,
    /// Mean cross-entropy on it.
    pub train_nll: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Mean test cross-entropy.
    pub test_nll: f64,
    /// `train_accuracy - test_accuracy`.
    pub gap: f64,
    /// `exp` of the entropy of the first modular layer's greedy test usage.
    pub effective_modules: Option<f64>,
    /// Per modular layer, how many test images each module served.
    pub test_usage: Vec<Vec<u64>>,
    /// The first modular layer's test usage per class (rows: classes, columns: modules).
    pub class_usage: Vec<Vec<u64>>,
    /// Class names, in label order.
    pub class_names: Vec<String>,
    /// Per hidden layer, the fraction of exact zeros on the test set.
    pub zero_fraction: Vec<f64>,
    /// Per hidden layer, the fraction of all-zero blocks of 32 activations per example.
    pub block_zero_fraction: Vec<f64>,
    /// ReLU network: the share of the training's layer passes that took the sparse products.
    pub sparse_share: Option<f64>,
    /// ReLU network: training and inference time per epoch with the sparse dispatch on and off.
    pub timing: Option<DispatchTiming>,
    /// ReLU network: the share of the products' multiply-adds an ideal sparse implementation
    /// saves at the measured test density.
    pub ideal_saving: Option<f64>,
    /// The run's seed.
    pub seed: u64,
    /// CPU threads.
    pub threads: usize,
    /// The backend.
    #[serde(flatten)]
    pub device: DeviceInfo,
}
