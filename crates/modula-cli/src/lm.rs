//! `modula train` on the Penn Treebank language-modelling task: a modular GRU (EM, REINFORCE,
//! noisy top-k) or a dense GRU, trained over truncated-BPTT windows into a run directory with
//! the resolved configuration, metrics, checkpoints and a summary.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use modula_data::{Streams, TextCorpus, data_dir};
use modula_em::lm::{LanguageModel, LmEval, LmModelConfig, LmTrainConfig, LmTrainer, WindowStats};
use modula_em::{Algo, DenseMatch};
use modula_nn::{Checkpoint, ParamStore};
use modula_tensor::Backend;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::run::{
    self, BackendKind, CONFIG_FILE, CliError, DeviceInfo, METRICS_FILE, OnBackend, SUMMARY_FILE,
    run_error,
};
use crate::train::{Progress, TrainArgs, default_run_dir, prepare_fresh_dir, write_file};

/// The task name of a language-modelling configuration.
pub const PTB_TASK: &str = "ptb";

/// Checkpoint metadata: seconds spent in training windows (evaluations excluded), over all
/// resumed parts, and the training tokens they covered.
const META_TRAIN_SECONDS: &str = "modula.train_seconds";
const META_TRAIN_TOKENS: &str = "modula.train_tokens";
/// Checkpoint metadata: the partly accumulated logging interval.
const META_LM_INTERVAL: &str = "modula.lm_interval";

/// Everything that determines a language-modelling run, as written to `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmRunConfig {
    /// Always `"ptb"`.
    pub task_name: String,
    /// Seeds the initialisation and every random choice of training.
    pub seed: u64,
    /// The backend.
    pub backend: BackendKind,
    /// CPU backend threads; 0 in a file means all cores.
    pub threads: usize,
    /// Where `ptb/ptb.{train,valid,test}.txt` are (default: `$MODULA_DATA` or `data`).
    pub data_dir: Option<PathBuf>,
    /// Stop (with a checkpoint, resumable) after this many minutes of wall time; 0: no limit.
    pub max_minutes: f64,
    /// The network.
    pub model: LmModelConfig,
    /// The algorithm and its schedule.
    pub train: LmTrainConfig,
}

impl Default for LmRunConfig {
    fn default() -> Self {
        LmRunConfig {
            task_name: PTB_TASK.to_string(),
            seed: 0,
            backend: BackendKind::Cpu,
            threads: 0,
            data_dir: None,
            max_minutes: 0.0,
            model: LmModelConfig::default(),
            train: LmTrainConfig::default(),
        }
    }
}

impl LmRunConfig {
    fn read(path: &Path) -> Result<Self, CliError> {
        read_config(path)
    }

    pub(crate) fn validate(&self) -> Result<(), CliError> {
        self.model
            .validate()
            .and_then(|()| self.train.validate())
            .map_err(|e| run_error(e.to_string()))?;
        if self.train.algo == Algo::Topk && self.model.modules < 2 {
            return Err(run_error(format!(
                "invalid configuration: `model.modules` is {}; noisy top-k needs at least 2 modules",
                self.model.modules
            )));
        }
        if !(self.max_minutes >= 0.0 && self.max_minutes.is_finite()) {
            return Err(run_error(format!(
                "invalid configuration: `max_minutes` is {}; use 0 (no limit) or a positive number",
                self.max_minutes
            )));
        }
        Ok(())
    }

    fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serialises")
    }

    /// A run name: algorithm, and `(M, K)` or the dense match.
    fn name(&self) -> String {
        match (self.train.algo, self.train.dense_match) {
            (Algo::Dense, DenseMatch::Compute) => "ptb-dense-compute".into(),
            (Algo::Dense, DenseMatch::Params) => {
                format!("ptb-dense-params-m{}k{}", self.model.modules, self.model.k)
            }
            (algo, _) => format!(
                "ptb-{}-m{}k{}",
                algo.name(),
                self.model.modules,
                self.model.k
            ),
        }
    }
}

/// Reads a language-modelling configuration; unknown keys are rejected with their name.
///
/// # Errors
/// A run error naming the file when it cannot be read or parsed.
pub fn read_config(path: &Path) -> Result<LmRunConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| run_error(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| run_error(format!("config {} is invalid: {e}", path.display())))
}

/// Whether the TOML file at `path` configures a language-modelling run (`task_name = "ptb"`).
///
/// # Errors
/// A run error naming the file when it cannot be read or is not TOML.
pub fn is_lm_config(path: &Path) -> Result<bool, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| run_error(format!("cannot read config {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| run_error(format!("config {} is invalid: {e}", path.display())))?;
    Ok(table.get("task_name").and_then(|v| v.as_str()) == Some(PTB_TASK))
}

/// Runs `modula train` for a language-modelling configuration (`--config` names one, or
/// `--resume` names a run directory holding one).
///
/// # Errors
/// A [`CliError`] for a bad configuration, run directory, data or checkpoint, a diverged loss
/// or a failed write.
pub fn run(args: TrainArgs) -> Result<(), CliError> {
    if args.steps.is_some() {
        return Err(run_error(
            "--steps counts toy-task iterations; a language-modelling run is bounded by --epochs and --max-minutes",
        ));
    }
    let (mut cfg, dir, resuming) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let cfg = LmRunConfig::read(&dir.join(CONFIG_FILE))?;
            (cfg, dir.clone(), true)
        }
        (None, Some(path)) => {
            let mut cfg = LmRunConfig::read(path)?;
            if let Some(algo) = args.algo {
                cfg.train.algo = algo.into();
            }
            if let Some(m) = args.dense_match {
                cfg.train.dense_match = m.into();
            }
            if let Some(seed) = args.seed {
                cfg.seed = seed;
            }
            if cfg.threads == 0 {
                cfg.threads = run::all_cores();
            }
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&cfg.name(), cfg.seed));
            (cfg, dir, false)
        }
        (None, None) => unreachable!("the caller routes here only with --config or --resume"),
    };
    if let Some(epochs) = args.epochs {
        cfg.train.epochs = epochs as usize;
    }
    if let Some(minutes) = args.max_minutes {
        cfg.max_minutes = minutes;
    }
    if let Some(threads) = args.threads {
        cfg.threads = threads as usize;
    }
    if let Some(backend) = args.backend {
        cfg.backend = backend;
    }
    cfg.validate()?;
    if !resuming {
        prepare_fresh_dir(&dir)?;
    }
    let (backend, threads) = (cfg.backend, cfg.threads);
    run::on_backend(backend, threads, Job { cfg, dir, resuming })
}

struct Job {
    cfg: LmRunConfig,
    dir: PathBuf,
    resuming: bool,
}

impl OnBackend for Job {
    fn run<B: Backend>(self, backend: B, device: DeviceInfo) -> Result<(), CliError> {
        LmTraining::start(backend, device, self.cfg, self.dir, self.resuming)?.run()
    }
}

/// The corpus, arranged for training and evaluation.
pub struct LmData {
    /// The corpus (vocabulary and splits).
    pub corpus: TextCorpus,
    /// The training split as `batch_size` streams (cut to `train_tokens` when set).
    pub train: Streams,
    /// The validation split as `batch_size` streams.
    pub valid: Streams,
    /// The test split as `batch_size` streams.
    pub test: Streams,
}

/// Loads PTB from the configured data directory and arranges it in streams.
///
/// # Errors
/// A run error quoting the data error, which says how to fetch the files.
pub fn load_data(cfg: &LmRunConfig) -> Result<LmData, CliError> {
    let dir = data_dir(cfg.data_dir.as_deref()).join("ptb");
    let corpus = TextCorpus::load_ptb(&dir).map_err(|e| run_error(e.to_string()))?;
    let batch = cfg.train.batch_size;
    let mut train_split = corpus.train.clone();
    if cfg.train.train_tokens > 0 {
        train_split.tokens.truncate(cfg.train.train_tokens);
    }
    let train = train_split.batchify(batch);
    if train.len < 2 {
        return Err(run_error(format!(
            "the training split has {} tokens: too few for {batch} streams (lower train.batch_size or raise train.train_tokens)",
            train_split.tokens.len()
        )));
    }
    let (valid, test) = (corpus.valid.batchify(batch), corpus.test.batchify(batch));
    Ok(LmData {
        corpus,
        train,
        valid,
        test,
    })
}

/// Builds the model and trainer of a configuration over `data` (fresh parameters from the
/// seed).
pub fn build<B: Backend>(backend: B, cfg: &LmRunConfig, data: &LmData) -> LmTrainer<B> {
    let vocab = data.corpus.vocab.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut params = ParamStore::new();
    let recurrent = cfg.model.recurrent(&cfg.train, vocab);
    let model = LanguageModel::new(
        &backend,
        &mut params,
        &cfg.model,
        recurrent,
        vocab,
        &mut rng,
    );
    LmTrainer::new(
        backend,
        model,
        params,
        cfg.train.clone(),
        cfg.seed,
        data.train.clone(),
    )
}

/// Loads the data of a run directory's configuration `cfg` (its resolved `config.toml`,
/// possibly with flags applied), builds the trainer and restores it from the checkpoint.
///
/// # Errors
/// A run error when the directory, data or checkpoint is missing, corrupt or from another run.
pub fn open_run<B: Backend>(
    backend: B,
    dir: &Path,
    cfg: &LmRunConfig,
) -> Result<(LmData, LmTrainer<B>, Checkpoint), CliError> {
    let data = load_data(cfg)?;
    let mut trainer = build(backend, cfg, &data);
    let ck = run::read_checkpoint(dir)?;
    trainer.restore(&ck).map_err(|e| run_error(e.to_string()))?;
    Ok((data, trainer, ck))
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
    /// Training tokens per second over the interval (training windows only).
    pub tokens_per_s: f64,
    /// Validation perplexity, at evaluation points.
    pub valid_ppl: Option<f64>,
}

/// Sums over a logging interval, saved in checkpoints (as bit patterns) so a resumed run logs
/// what the uninterrupted one would.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LmInterval {
    windows: u64,
    nll: u64,
    ctrl_nll: u64,
    entropy_windows: u64,
    mean_entropy: u64,
    batch_entropy: u64,
    usage: Vec<u64>,
    changed: Option<u64>,
    tokens: u64,
    seconds: u64,
}

fn add_bits(acc: &mut u64, v: f64) {
    *acc = (f64::from_bits(*acc) + v).to_bits();
}

impl LmInterval {
    fn add(&mut self, s: &WindowStats, seconds: f64) {
        self.windows += 1;
        add_bits(&mut self.nll, s.nll);
        add_bits(&mut self.ctrl_nll, s.ctrl_nll);
        if let Some(c) = &s.controller {
            self.entropy_windows += 1;
            add_bits(&mut self.mean_entropy, c.mean_entropy);
            add_bits(&mut self.batch_entropy, c.batch_entropy);
        }
        if self.usage.len() < s.usage.len() {
            self.usage.resize(s.usage.len(), 0);
        }
        self.usage
            .iter_mut()
            .zip(&s.usage)
            .for_each(|(a, u)| *a += u);
        if let Some(e) = &s.e_step {
            self.changed = Some(e.changed.to_bits());
        }
        self.tokens += s.tokens as u64;
        add_bits(&mut self.seconds, seconds);
    }

    fn mean(sum: u64, n: u64) -> Option<f64> {
        (n > 0).then(|| f64::from_bits(sum) / n as f64)
    }
}

/// `summary.json` of a language-modelling run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmSummary {
    /// `"ptb"`.
    pub task: String,
    /// The algorithm.
    pub algo: String,
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
    /// The run's seed.
    pub seed: u64,
    /// CPU threads.
    pub threads: usize,
    /// The backend.
    #[serde(flatten)]
    pub device: DeviceInfo,
}

/// `exp` of the entropy of a usage histogram.
pub fn usage_perplexity(usage: &[u64]) -> Option<f64> {
    let total: u64 = usage.iter().sum();
    (total > 0).then(|| {
        let h: f64 = usage
            .iter()
            .filter(|&&u| u > 0)
            .map(|&u| {
                let p = u as f64 / total as f64;
                -p * p.ln()
            })
            .sum();
        h.exp()
    })
}

struct LmTraining<B: Backend> {
    cfg: LmRunConfig,
    device: DeviceInfo,
    dir: PathBuf,
    data: LmData,
    trainer: LmTrainer<B>,
    interval: LmInterval,
    metrics: File,
    train_seconds: f64,
    train_tokens: u64,
    checkpoint_step: u64,
}

impl<B: Backend> LmTraining<B> {
    fn start(
        backend: B,
        device: DeviceInfo,
        cfg: LmRunConfig,
        dir: PathBuf,
        resuming: bool,
    ) -> Result<Self, CliError> {
        let metrics_path = dir.join(METRICS_FILE);
        let (data, trainer, interval, train_seconds, train_tokens) = if resuming {
            let (data, trainer, ck) = open_run(backend, &dir, &cfg)?;
            let get = |k: &str| ck.metadata.get(k).cloned().unwrap_or_default();
            let interval = serde_json::from_str(&get(META_LM_INTERVAL)).map_err(|_| {
                run_error(format!(
                    "checkpoint {} lacks `{META_LM_INTERVAL}`; it was not written by `modula train`",
                    run::checkpoint_path(&dir).display()
                ))
            })?;
            let seconds = get(META_TRAIN_SECONDS).parse().unwrap_or(0.0);
            let tokens = get(META_TRAIN_TOKENS).parse().unwrap_or(0);
            trim_metrics(&metrics_path, trainer.step)?;
            (data, trainer, interval, seconds, tokens)
        } else {
            let data = load_data(&cfg)?;
            let trainer = build(backend, &cfg, &data);
            (data, trainer, LmInterval::default(), 0.0, 0)
        };
        write_file(&dir.join(CONFIG_FILE), &cfg.to_toml())?;
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| run_error(format!("cannot open {}: {e}", metrics_path.display())))?;
        let checkpoint_step = trainer.step;
        let mut training = LmTraining {
            cfg,
            device,
            dir,
            data,
            trainer,
            interval,
            metrics,
            train_seconds,
            train_tokens,
            checkpoint_step,
        };
        if !resuming {
            // The curves start from the untrained model's validation perplexity.
            training.record(true)?;
            training.save_checkpoint()?;
        }
        Ok(training)
    }

    fn run(mut self) -> Result<(), CliError> {
        let t = &self.trainer;
        let per_epoch = t.windows_per_epoch() as u64;
        let total = per_epoch * self.cfg.train.epochs as u64;
        eprintln!(
            "modula train: {} on ptb, seed {}, {}, {} epochs of {per_epoch} windows, {} parameters, {:.1} MFLOP/token; run directory {}",
            self.cfg.name(),
            self.cfg.seed,
            self.device.describe(self.cfg.threads),
            self.cfg.train.epochs,
            t.params.num_scalars(&t.backend),
            t.model.flops_per_token() as f64 / 1e6,
            self.dir.display()
        );
        let start = Instant::now();
        let limit = self.cfg.max_minutes * 60.0;
        let progress = Progress::new(total, self.trainer.step);
        let train = &self.cfg.train;
        let (log_every, eval_every, ckpt_every) = (
            train.log_every as u64,
            train.eval_every as u64,
            train.checkpoint_every as u64,
        );
        while !self.trainer.finished() {
            if limit > 0.0 && start.elapsed().as_secs_f64() >= limit {
                break;
            }
            let t0 = Instant::now();
            let stats = self.trainer.step().map_err(|e| {
                progress.finish();
                run::training_error(e, "window", self.checkpoint_step, &self.dir)
            })?;
            let seconds = t0.elapsed().as_secs_f64();
            self.train_seconds += seconds;
            self.train_tokens += stats.tokens as u64;
            self.interval.add(&stats, seconds);
            let step = self.trainer.step;
            progress.tick(step);
            let epoch_end = self.trainer.window == 0;
            let evaluate = step.is_multiple_of(eval_every) || epoch_end;
            if step.is_multiple_of(log_every) || evaluate {
                let record = self.record(evaluate)?;
                let ppl = record
                    .valid_ppl
                    .map_or(String::new(), |p| format!(", valid ppl {p:.1}"));
                progress.note(
                    format!(
                        "train ppl {:.1}{ppl}, {:.0} tok/s",
                        record.train_nll.unwrap_or(f64::NAN).exp(),
                        record.tokens_per_s
                    ),
                    format!(
                        "window {step}, epoch {:.2}: train ppl {:.1}{ppl}, {:.0} tokens/s",
                        record.epoch,
                        record.train_nll.unwrap_or(f64::NAN).exp(),
                        record.tokens_per_s
                    ),
                );
            }
            if step.is_multiple_of(ckpt_every) || epoch_end {
                self.save_checkpoint()?;
            }
        }
        progress.finish();
        self.save_checkpoint()?;
        self.finish()
    }

    fn eval(&self, streams: &Streams, max_tokens: usize) -> Result<LmEval, CliError> {
        self.trainer
            .evaluate(streams, max_tokens, &mut |_, _| {})
            .map_err(|e| run_error(format!("evaluation failed: {e}")))
    }

    fn record(&mut self, evaluate: bool) -> Result<LmRecord, CliError> {
        let valid_ppl = if evaluate {
            Some(
                self.eval(&self.data.valid, self.cfg.train.eval_tokens)?
                    .perplexity,
            )
        } else {
            None
        };
        let t = &self.trainer;
        let iv = &self.interval;
        let record = LmRecord {
            step: t.step,
            epoch: t.epoch as f64 + t.window as f64 / t.windows_per_epoch() as f64,
            tokens: t.tokens_seen(),
            train_nll: LmInterval::mean(iv.nll, iv.windows),
            ctrl_nll: LmInterval::mean(iv.ctrl_nll, iv.windows),
            controller_perplexity: LmInterval::mean(iv.mean_entropy, iv.entropy_windows)
                .map(f64::exp),
            batch_perplexity: LmInterval::mean(iv.batch_entropy, iv.entropy_windows).map(f64::exp),
            usage: iv.usage.clone(),
            changed: iv.changed.map(f64::from_bits),
            tokens_per_s: iv.tokens as f64 / f64::from_bits(iv.seconds).max(1e-9),
            valid_ppl,
        };
        let line = serde_json::to_string(&record).expect("a record serialises");
        writeln!(self.metrics, "{line}")
            .and_then(|()| self.metrics.flush())
            .map_err(|e| run_error(format!("cannot write {METRICS_FILE}: {e}")))?;
        self.interval = LmInterval::default();
        Ok(record)
    }

    fn save_checkpoint(&mut self) -> Result<(), CliError> {
        let mut ck = self
            .trainer
            .checkpoint()
            .map_err(|e| run_error(e.to_string()))?;
        ck.metadata
            .insert(run::META_CONFIG.into(), self.cfg.to_toml());
        ck.metadata.insert(
            META_LM_INTERVAL.into(),
            serde_json::to_string(&self.interval).expect("an interval serialises"),
        );
        ck.metadata.insert(
            META_TRAIN_SECONDS.into(),
            format!("{:?}", self.train_seconds),
        );
        ck.metadata
            .insert(META_TRAIN_TOKENS.into(), self.train_tokens.to_string());
        ck.write(run::checkpoint_path(&self.dir))
            .map_err(|e| run_error(e.to_string()))?;
        self.checkpoint_step = self.trainer.step;
        Ok(())
    }

    fn finish(self) -> Result<(), CliError> {
        let limit = self.cfg.train.eval_tokens;
        let valid = self.eval(&self.data.valid, limit)?;
        let test = self.eval(&self.data.test, limit)?;
        let t = &self.trainer;
        let modular = t.model.modular_shape();
        let summary = LmSummary {
            task: PTB_TASK.into(),
            algo: self.cfg.train.algo.name().into(),
            name: self.cfg.name(),
            modules: modular.map(|(m, _)| m),
            k: modular.map(|(_, k)| k),
            hidden: t.model.hidden,
            finished: t.finished(),
            epochs: t.epoch,
            steps: t.step,
            tokens_seen: t.tokens_seen(),
            train_seconds: self.train_seconds,
            tokens_per_s: self.train_tokens as f64 / self.train_seconds.max(1e-9),
            parameters: t.params.num_scalars(&t.backend),
            flops_per_token: t.model.flops_per_token(),
            eval_tokens: Some([valid.tokens, test.tokens]),
            valid_ppl: valid.perplexity,
            test_ppl: test.perplexity,
            effective_modules: usage_perplexity(&test.usage),
            test_usage: test.usage.clone(),
            seed: self.cfg.seed,
            threads: self.cfg.threads,
            device: self.device.clone(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        write_file(&self.dir.join(SUMMARY_FILE), &(json + "\n"))?;
        let state = if summary.finished {
            "finished".to_string()
        } else {
            format!(
                "stopped by --max-minutes at window {}; continue with `modula train --resume {}`",
                t.step,
                self.dir.display()
            )
        };
        println!(
            "{}: {} epochs, {} windows, {:.0} tokens/s ({state})",
            summary.name, summary.epochs, summary.steps, summary.tokens_per_s
        );
        println!(
            "valid ppl {:.2}, test ppl {:.2}, {} parameters, {:.2} MFLOP/token{}",
            summary.valid_ppl,
            summary.test_ppl,
            summary.parameters,
            summary.flops_per_token as f64 / 1e6,
            summary
                .effective_modules
                .map_or(String::new(), |e| format!(", {e:.2} effective modules"))
        );
        println!("run directory: {}", self.dir.display());
        Ok(())
    }
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a killed run may have logged past its
/// last checkpoint, or left a torn last line).
fn trim_metrics(path: &Path, step: u64) -> Result<(), CliError> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<LmRecord>(l).is_ok_and(|r| r.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(path, &kept)
}
