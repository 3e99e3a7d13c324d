//! Word-level language modelling with a [`LanguageModel`] over truncated-BPTT windows of a
//! text corpus: Penn Treebank, or any plain-text corpus (the `text` task). EM keys its
//! assignment table by training token position; an E-step precedes the gradient step of
//! window `w` of epoch `e` when `(w + e) % e_every == 0`, and scores per stream the stored
//! selection path through the window against `samples - 1` paths sampled ancestrally through
//! time.

use std::path::PathBuf;

use modula_data::{DataError, Streams, TextCorpus, TextOptions, Vocab, Window};
use modula_em::models::{LanguageModel, LmModelConfig, LmWindow};
use modula_em::{
    Algo, Batch, ConfigError, DEFAULT_DIVERGENCE_FACTOR, DenseMatch, EPath, EStepDue,
    EStepSettings, Group, Routes, Search, Task, TrainError, TrainSettings, Trainer, invalid,
};
use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Checkpoint, Ctx, ParamStore, StoredTensor};
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The optimisation schedule of a language-modelling run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmTrainConfig {
    /// Training algorithm.
    pub algo: Algo,
    /// What the dense baseline is matched to (only with `algo = "dense"`).
    pub dense_match: DenseMatch,
    /// Passes over the training split.
    pub epochs: usize,
    /// Truncated-BPTT window length.
    pub bptt: usize,
    /// Parallel streams per window.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Gradient-norm clipping threshold; 0 disables clipping.
    pub grad_clip: f32,
    /// EM: candidate selection paths per stream in an E-step (the stored one plus
    /// `samples - 1` ancestral draws).
    pub samples: usize,
    /// EM: window `w` of epoch `e` is preceded by an E-step on the same window when
    /// `(w + e) % e_every == 0`, so every window is E-stepped once in `e_every` epochs.
    pub e_every: usize,
    /// EM: how an E-step searches: `"path"` (whole paths, the paper's E-step) or `"step"`
    /// (per time step along the best prefix).
    pub e_search: Search,
    /// EM, per-step search: weight of `log p(a_t | .)` in a step's score, 0 to 1.
    pub e_prior: f32,
    /// EM, per-step search: words scored per candidate (the next one, and `e_horizon - 1`
    /// more under greedy continuation).
    pub e_horizon: usize,
    /// EM, per-step search: each module takes at most `ceil(e_capacity * batch_size * K / M)`
    /// streams per step; 0: no limit.
    pub e_capacity: f32,
    /// EM, per-step search: draw each step's choice from its posterior instead of taking the
    /// best (stochastic EM).
    pub e_sample: bool,
    /// EM: proposals from `(1 - e_uniform) * p(a | .) + e_uniform / M`.
    pub e_uniform: f32,
    /// EM: score candidates with dropout, as the M-step trains.
    pub e_dropout: bool,
    /// EM, per-step search: `"best"` walks the best prefix and trains the modules along the
    /// stored routes; `"greedy"` walks the controller's greedy routes, stores each step's
    /// best candidate as the controller's target and trains the modules along the greedy
    /// routes (see [`EPath`]).
    pub e_path: EPath,
    /// EM: weight of the controller loss `-log p(a* | .)` in the M-step.
    pub ctrl_weight: f32,
    /// EM: leave the controller loss out at positions no E-step has visited yet.
    pub ctrl_mask: bool,
    /// Upcycling: a run directory of a compute-matched dense run whose checkpoint
    /// initialises a new modular run (see [`upcycle`]); empty: none. Only read when the run
    /// starts; its dense training counts in the modular run's budget of tokens.
    pub init_from: PathBuf,
    /// Upcycling: each module's noise, relative to the root mean square of the dense tensor.
    pub init_noise: f32,
    /// REINFORCE: decay of the moving-average reward baseline.
    pub reinforce_decay: f32,
    /// Noisy top-k: weight of the importance loss.
    pub importance_weight: f32,
    /// Windows between logged training metrics.
    pub log_every: usize,
    /// Windows between validation evaluations (one also ends every epoch).
    pub eval_every: usize,
    /// Windows between checkpoints (one also ends every epoch and the run).
    pub checkpoint_every: usize,
    /// Evaluate on at most this many tokens of each split (0: the whole split), in the
    /// periodic validation and in the final summary; for smoke runs.
    pub eval_tokens: usize,
    /// Train on at most this many tokens of the training split (0: all of it); for smoke runs.
    pub train_tokens: usize,
    /// Stop after this many windows over all epochs (0: after `epochs` epochs).
    pub steps: usize,
    /// Stop when the loss exceeds this many times the initial loss's magnitude (0: only NaN
    /// and infinity stop the run); see `modula_em::DivergenceGuard`.
    pub divergence_factor: f32,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
            algo: Algo::Em,
            dense_match: DenseMatch::Compute,
            epochs: 6,
            bptt: 35,
            batch_size: 32,
            lr: 1e-3,
            grad_clip: 5.0,
            samples: 10,
            e_every: 10,
            e_search: Search::Path,
            e_prior: 1.0,
            e_horizon: 1,
            e_capacity: 0.0,
            e_sample: false,
            e_uniform: 0.0,
            e_dropout: false,
            e_path: EPath::Best,
            ctrl_weight: 1.0,
            ctrl_mask: false,
            init_from: PathBuf::new(),
            init_noise: 0.1,
            reinforce_decay: 0.9,
            importance_weight: 0.1,
            log_every: 20,
            eval_every: 200,
            checkpoint_every: 100,
            eval_tokens: 0,
            train_tokens: 0,
            steps: 0,
            divergence_factor: DEFAULT_DIVERGENCE_FACTOR,
        }
    }
}

impl LmTrainConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("train.epochs", self.epochs),
            ("train.bptt", self.bptt),
            ("train.batch_size", self.batch_size),
            ("train.samples", self.samples),
            ("train.e_every", self.e_every),
            ("train.log_every", self.log_every),
            ("train.eval_every", self.eval_every),
            ("train.checkpoint_every", self.checkpoint_every),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "is 0; use 1 or more"));
            }
        }
        if !(self.init_noise >= 0.0 && self.init_noise.is_finite()) {
            return Err(invalid(
                "train.init_noise",
                format!("is {}; use 0 or more (0.1 by default)", self.init_noise),
            ));
        }
        self.settings().validate(self.importance_weight)
    }

    /// What the trainer needs of it.
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            algo: self.algo,
            lr: self.lr,
            grad_clip: self.grad_clip,
            estep: EStepSettings {
                samples: self.samples,
                search: self.e_search,
                prior_weight: self.e_prior,
                horizon: self.e_horizon,
                capacity: self.e_capacity,
                sample: self.e_sample,
                uniform: self.e_uniform,
                dropout: self.e_dropout,
                path: self.e_path,
            },
            e_every: self.e_every,
            ctrl_weight: self.ctrl_weight,
            ctrl_mask: self.ctrl_mask,
            reinforce_decay: self.reinforce_decay,
            divergence_factor: self.divergence_factor,
        }
    }
}

/// Where a language-modelling task's corpus comes from (the `text` task's `[task]` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// A directory holding `train.txt`, `valid.txt` and `test.txt`, or one UTF-8 file split
    /// by line into training, validation and test lines by the fractions below.
    pub path: PathBuf,
    /// Largest vocabulary, counting `<eos>` and `<unk>` (rarer training words become `<unk>`),
    /// so that a corpus never yields an unbounded softmax.
    pub max_vocab: usize,
    /// One file only: fraction of the lines, after the training lines, for validation.
    pub valid_fraction: f64,
    /// One file only: fraction of the lines, taken last, for testing.
    pub test_fraction: f64,
    /// Whether to lower-case the text before tokenising.
    pub lowercase: bool,
}

impl Default for TextConfig {
    fn default() -> Self {
        let o = TextOptions::default();
        TextConfig {
            path: PathBuf::new(),
            max_vocab: o.max_vocab.unwrap_or(10_000),
            valid_fraction: o.valid_fraction,
            test_fraction: o.test_fraction,
            lowercase: o.lowercase,
        }
    }
}

impl TextConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(invalid(
                "task.path",
                "is empty; name a directory holding train.txt, valid.txt and test.txt, or one text file",
            ));
        }
        if self.max_vocab < 2 {
            return Err(invalid(
                "task.max_vocab",
                format!(
                    "is {}; use at least 2 (room for <eos> and <unk>), 10000 by default",
                    self.max_vocab
                ),
            ));
        }
        let (v, t) = (self.valid_fraction, self.test_fraction);
        for (field, f) in [("task.valid_fraction", v), ("task.test_fraction", t)] {
            if !(f.is_finite() && (0.0..1.0).contains(&f)) {
                return Err(invalid(field, format!("is {f}; use a fraction in [0, 1)")));
            }
        }
        if v + t >= 1.0 {
            return Err(invalid(
                "task.test_fraction",
                format!(
                    "{t} plus task.valid_fraction {v} leaves no training lines; keep their sum below 1"
                ),
            ));
        }
        Ok(())
    }

    /// Loads the corpus: the three files of a directory, or one file split by the fractions.
    ///
    /// # Errors
    /// A [`DataError`] naming the file.
    pub fn load(&self) -> Result<TextCorpus, DataError> {
        let options = TextOptions {
            max_vocab: Some(self.max_vocab),
            valid_fraction: self.valid_fraction,
            test_fraction: self.test_fraction,
            lowercase: self.lowercase,
        };
        if self.path.is_dir() {
            TextCorpus::load_text_dir(&self.path, &options)
        } else {
            TextCorpus::load_text(&self.path, &options)
        }
    }
}

/// A corpus arranged for training and evaluation.
#[derive(Clone, Debug)]
pub struct LmData {
    /// The vocabulary.
    pub vocab: Vocab,
    /// The training split as `batch_size` streams (cut to `train_tokens` when set).
    pub train: Streams,
    /// The validation split as `batch_size` streams.
    pub valid: Streams,
    /// The test split as `batch_size` streams.
    pub test: Streams,
}

impl LmData {
    /// Arranges `corpus` for `train` (its batch size and `train_tokens`).
    ///
    /// # Errors
    /// A message when the training split is too short for the streams.
    pub fn new(corpus: TextCorpus, train: &LmTrainConfig) -> Result<Self, String> {
        let batch = train.batch_size;
        let mut train_split = corpus.train.clone();
        if train.train_tokens > 0 {
            train_split.tokens.truncate(train.train_tokens);
        }
        let streams = train_split.batchify(batch);
        if streams.len < 2 {
            return Err(format!(
                "the training split has {} tokens: too few for {batch} streams (lower train.batch_size or raise train.train_tokens)",
                train_split.tokens.len()
            ));
        }
        Ok(LmData {
            train: streams,
            valid: corpus.valid.batchify(batch),
            test: corpus.test.batchify(batch),
            vocab: corpus.vocab,
        })
    }
}

/// Greedy evaluation of a split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmEval {
    /// Mean negative log-likelihood per token (nats).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// How many (position, slot) pairs each module served (empty for a dense model).
    pub usage: Vec<u64>,
}

/// Upcycling: initialises a modular language model's parameters from a trained dense GRU of
/// one module's width (a compute-matched dense run's checkpoint `dense`): the embedding and
/// the softmax are copied, and each of the `M` modules becomes the dense cell's weights and
/// biases plus Gaussian noise of standard deviation `noise` times the root mean square of
/// the tensor it perturbs, drawn from `rng`. The controller keeps its own initialisation.
/// With `K = 1` and no noise, every module computes the dense cell exactly.
///
/// # Errors
/// A message naming the tensor that is missing from `dense` or has another shape (a
/// checkpoint of another model, or a dense run of another width).
pub fn upcycle<B: Backend>(
    b: &B,
    params: &mut ParamStore<B>,
    dense: &Checkpoint,
    modules: usize,
    noise: f32,
    rng: &mut impl rand::Rng,
) -> Result<(), String> {
    use rand_distr::{Distribution, Normal};
    let copy = ["embed.table", "softmax.weight", "softmax.bias"];
    let stack = [
        ("gru.w_x", "gru.input.weight"),
        ("gru.b_x", "gru.input.bias"),
        ("gru.w_h", "gru.recurrent.weight"),
        ("gru.b_h", "gru.recurrent.bias"),
    ];
    let ids: Vec<_> = params.ids().collect();
    let find = |params: &ParamStore<B>, name: &str| {
        ids.iter()
            .copied()
            .find(|&id| params.name(id) == name)
            .ok_or_else(|| format!("the modular model has no parameter `{name}`"))
    };
    let read = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>, String> {
        dense
            .f32(name, Some(&shape))
            .map(<[f32]>::to_vec)
            .map_err(|e| format!("the dense checkpoint cannot initialise `{name}`: {e}"))
    };
    for name in copy {
        let id = find(params, name)?;
        let shape = b.shape(params.get(id));
        *params.get_mut(id) = b.upload(shape, &read(name, shape)?);
    }
    for (from, to) in stack {
        let id = find(params, to)?;
        if params.is_derived(id) {
            return Err(format!(
                "`{to}` is derived from a shared base (model.shared_base = true), which \
                 upcycling does not initialise; set model.shared_base = false or leave \
                 train.init_from out"
            ));
        }
        let [rows, cols] = b.shape(params.get(id));
        let block = [rows / modules, cols];
        // A bias is one row per module; a weight is one block of rows per module.
        let dense_shape = if to.ends_with("bias") {
            [1, cols]
        } else {
            block
        };
        let base = read(from, dense_shape)?;
        let rms = (base.iter().map(|v| v * v).sum::<f32>() / base.len().max(1) as f32).sqrt();
        let std = noise * rms;
        let normal = Normal::new(0.0, std.max(0.0)).map_err(|e| e.to_string())?;
        let mut stacked = Vec::with_capacity(rows * cols);
        for _ in 0..modules {
            stacked.extend(base.iter().map(
                |&v| {
                    if std > 0.0 { v + normal.sample(rng) } else { v }
                },
            ));
        }
        *params.get_mut(id) = b.upload([rows, cols], &stacked);
    }
    Ok(())
}

/// The filtered-mixture and posterior evaluations of a split (see
/// [`LanguageModel::filtered_window`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmFiltered {
    /// Perplexity under the filtered mixture: a valid causal score, at `routes` modules'
    /// compute per token.
    pub mixture_ppl: f64,
    /// Perplexity along the committed posterior routes, which were chosen knowing the word
    /// they predict: a diagnostic of the posterior-prior gap, not a valid score.
    pub posterior_ppl: f64,
    /// Candidate routes scored per token (`M` for `K = 1`, else the samples drawn).
    pub routes: usize,
    /// Tokens scored.
    pub tokens: usize,
}

/// Time-major ids of a window: `ids[t][i]` is stream `i`'s word at step `t`.
fn time_major(w: &Window) -> Vec<Vec<u32>> {
    (0..w.steps)
        .map(|t| (0..w.batch).map(|i| w.inputs[i * w.steps + t]).collect())
        .collect()
}

/// Time-major copy of a `[batch, steps]` row-major field of a window.
fn flatten_time_major<T: Copy>(w: &Window, field: &[T]) -> Vec<T> {
    (0..w.steps)
        .flat_map(|t| (0..w.batch).map(move |i| field[i * w.steps + t]))
        .collect()
}

/// The language-modelling task on the device: the streams, the window cursor and the hidden
/// state carried across windows.
#[derive(Debug)]
pub struct LmTask<B: Backend> {
    /// The corpus in streams.
    pub data: LmData,
    /// Truncated-BPTT window length.
    pub bptt: usize,
    /// Completed epochs.
    pub epoch: usize,
    /// The next window within the epoch.
    pub window: usize,
    hidden: usize,
    state: B::Tensor,
}

/// Metadata keys and tensor of the task's cursor in checkpoints.
const META_EPOCH: &str = "epoch";
const META_WINDOW: &str = "window";
const STATE_TENSOR: &str = "lm.state";

impl<B: Backend> LmTask<B> {
    /// Builds the model for `train.algo` over `data` (fresh parameters from `seed`) and the
    /// trainer. The configurations must be valid.
    pub fn trainer(
        backend: B,
        data: LmData,
        model: &LmModelConfig,
        train: &LmTrainConfig,
        seed: u64,
    ) -> Trainer<B, LmTask<B>> {
        let vocab = data.vocab.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamStore::new();
        let recurrent = model.recurrent(
            train.algo,
            train.dense_match,
            train.importance_weight,
            vocab,
        );
        let net = LanguageModel::new(&backend, &mut params, model, recurrent, vocab, &mut rng);
        let state = backend.zeros([data.train.batch, net.hidden]);
        let task = LmTask {
            data,
            bptt: train.bptt,
            epoch: 0,
            window: 0,
            hidden: net.hidden,
            state,
        };
        Trainer::new(backend, task, net, params, train.settings(), seed)
    }

    /// The hidden state carried into the next window, `[batch, hidden]`.
    pub fn state(&self) -> &B::Tensor {
        &self.state
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.data.train.window_count(self.bptt)
    }

    /// Training tokens seen after `epoch` epochs and `window` windows of the current one.
    pub fn tokens_seen(&self) -> u64 {
        // Every window but an epoch's last has `bptt` steps, so the steps done this epoch are
        // `window * bptt`, capped by the `len - 1` steps an epoch has.
        let train = &self.data.train;
        let steps = train.len.saturating_sub(1);
        let per_epoch = (train.batch * steps) as u64;
        let within = (train.batch * (self.window * self.bptt).min(steps)) as u64;
        self.epoch as u64 * per_epoch + within
    }

    /// Greedy evaluation of `model` over `streams` (the state carried across its windows,
    /// starting at zero), stopping after `max_tokens` tokens when it is positive. `on_window`
    /// sees every window with its per-step selections (empty for a dense model).
    ///
    /// # Errors
    /// Device failures.
    pub fn evaluate(
        &self,
        b: &B,
        model: &LanguageModel,
        params: &ParamStore<B>,
        streams: &Streams,
        max_tokens: usize,
        on_window: &mut dyn FnMut(&Window, &[Selection]),
    ) -> Result<LmEval, BackendError> {
        let mut state = b.zeros([streams.batch, model.hidden]);
        let (mut total, mut tokens) = (0.0f64, 0usize);
        let mut usage = vec![0u64; model.modular_shape().map_or(0, |(m, _)| m)];
        for w in streams.windows(self.bptt) {
            if max_tokens > 0 && tokens >= max_tokens {
                break;
            }
            let ids = time_major(&w);
            let targets = flatten_time_major(&w, &w.targets);
            let mut route = |_: usize, c: &ControllerOutput<B>| c.greedy(b);
            let out = model.forward_window(
                b,
                params,
                &ids,
                &targets,
                &state,
                Routes::Chosen(&mut route),
                false,
                &mut Ctx::eval(),
            )?;
            total += out.nll.iter().map(|&l| l as f64).sum::<f64>();
            tokens += out.nll.len();
            for s in &out.selections {
                s.as_slice().iter().for_each(|&a| usage[a as usize] += 1);
            }
            on_window(&w, &out.selections);
            state = out.h_last;
        }
        let nll = total / tokens.max(1) as f64;
        Ok(LmEval {
            nll,
            perplexity: nll.exp(),
            tokens,
            usage,
        })
    }
}

impl<B: Backend> LmTask<B> {
    /// The filtered-mixture and posterior evaluations of `model` over `streams` (state carried
    /// across windows, starting at zero), stopping after `max_tokens` tokens when positive;
    /// `samples` selections per step are drawn for `K > 1`, from a generator seeded by `seed`.
    /// `None` for a model without a controller-routed modular cell.
    ///
    /// # Errors
    /// Device failures.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_filtered(
        &self,
        b: &B,
        model: &LanguageModel,
        params: &ParamStore<B>,
        streams: &Streams,
        max_tokens: usize,
        samples: usize,
        seed: u64,
    ) -> Result<Option<LmFiltered>, BackendError> {
        let Some((m, k)) = model.modular_shape() else {
            return Ok(None);
        };
        if !matches!(model.cell, modula_em::models::Cell::Modular(_)) {
            return Ok(None);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut state = b.zeros([streams.batch, model.hidden]);
        let (mut mixture, mut posterior, mut tokens) = (0.0f64, 0.0f64, 0usize);
        for w in streams.windows(self.bptt) {
            if max_tokens > 0 && tokens >= max_tokens {
                break;
            }
            let ids = time_major(&w);
            let targets = flatten_time_major(&w, &w.targets);
            let out =
                model.filtered_window(b, params, &ids, &targets, &state, samples, &mut rng)?;
            mixture += out.mixture_nll.iter().sum::<f64>();
            posterior += out.posterior_nll.iter().sum::<f64>();
            tokens += out.mixture_nll.len();
            state = out.h_last;
        }
        let per = |total: f64| (total / tokens.max(1) as f64).exp();
        Ok(Some(LmFiltered {
            mixture_ppl: per(mixture),
            posterior_ppl: per(posterior),
            routes: if k == 1 { m } else { samples },
            tokens,
        }))
    }
}

impl<B: Backend> Task<B> for LmTask<B> {
    type Model = LanguageModel;

    fn table_rows(&self) -> usize {
        self.data.train.tokens.len()
    }

    /// Every stream's positions but its last, whose token is only a target.
    fn trained_keys(&self) -> usize {
        self.data.train.batch * self.data.train.len.saturating_sub(1)
    }

    fn steps_per_epoch(&self) -> u64 {
        self.windows_per_epoch() as u64
    }

    fn batch(&mut self, b: &B, _step: u64) -> Batch<LmWindow<B>> {
        let w = self.data.train.window(self.window, self.bptt);
        let n = w.batch;
        // Global token indices fit u32: the table is sized by the training split.
        let positions: Vec<u32> = flatten_time_major(&w, &w.indices)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let groups = positions
            .chunks(n)
            .map(|keys| Group {
                layer: 0,
                keys: keys.to_vec(),
            })
            .collect();
        Batch {
            input: LmWindow {
                ids: time_major(&w),
                targets: flatten_time_major(&w, &w.targets),
                h0: b.duplicate(&self.state),
            },
            groups,
            examples: n,
            units: n * w.steps,
        }
    }

    /// The offset moves with the epoch so that, whatever the number of windows per epoch,
    /// every window is E-stepped once in `e_every` epochs (with `step % e_every` an epoch of
    /// 830 windows and `e_every = 10` would E-step the same tenth of the corpus every epoch
    /// and leave the rest at its random initial assignment).
    fn e_step_due(&self, _step: u64, e_every: usize) -> EStepDue {
        if (self.window + self.epoch).is_multiple_of(e_every) {
            EStepDue::Before
        } else {
            EStepDue::No
        }
    }

    fn advance(&mut self, b: &B, carry: Option<B::Tensor>) {
        if let Some(h) = carry {
            self.state = h;
        }
        self.window += 1;
        if self.window == self.windows_per_epoch() {
            self.window = 0;
            self.epoch += 1;
            self.state = b.zeros([self.data.train.batch, self.hidden]);
        }
    }

    fn save(&self, b: &B, ck: &mut Checkpoint) -> Result<(), BackendError> {
        let [r, c] = b.shape(&self.state);
        ck.insert(
            STATE_TENSOR,
            StoredTensor::f32(vec![r, c], b.download(&self.state)?),
        );
        ck.metadata
            .insert(META_EPOCH.into(), self.epoch.to_string());
        ck.metadata
            .insert(META_WINDOW.into(), self.window.to_string());
        Ok(())
    }

    fn restore(&mut self, b: &B, ck: &Checkpoint) -> Result<(), TrainError> {
        let mismatch = |problem: String| TrainError::Mismatch {
            path: ck.origin().display().to_string(),
            problem,
        };
        let number = |key: &str| -> Result<usize, TrainError> {
            ck.metadata
                .get(key)
                .ok_or_else(|| mismatch(format!("metadata `{key}` is missing")))?
                .parse()
                .map_err(|_| mismatch(format!("metadata `{key}` is not a number")))
        };
        let (epoch, window) = (number(META_EPOCH)?, number(META_WINDOW)?);
        if window >= self.windows_per_epoch() {
            return Err(mismatch(format!(
                "window {window} is past the {} windows of an epoch",
                self.windows_per_epoch()
            )));
        }
        let shape = b.shape(&self.state);
        self.state = b.upload(shape, ck.f32(STATE_TENSOR, Some(&shape))?);
        self.epoch = epoch;
        self.window = window;
        Ok(())
    }
}
