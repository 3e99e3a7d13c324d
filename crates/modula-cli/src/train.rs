//! `modula train`: trains a modular network on the toy task and fills a run directory with
//! the resolved configuration, metrics, checkpoints, a summary and plots.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use modula_em::algo::{EStats, StepStats};
use modula_em::{Algo, DenseMatch, StepOutcome, ToyExperiment};
use modula_nn::Checkpoint;
use modula_tensor::Backend;
use serde::{Deserialize, Serialize};

use crate::run::{
    self, BackendKind, CONFIG_FILE, CliError, DeviceInfo, Figures, META_CONFIG, META_INTERVAL,
    META_SECONDS, METRICS_FILE, OnBackend, RunConfig, SUMMARY_FILE, run_error,
};
use crate::{lm, plot};

/// The training algorithm, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgoArg {
    /// Generalized (Viterbi) EM.
    Em,
    /// REINFORCE with a moving-average baseline.
    Reinforce,
    /// Noisy top-k gating with the importance loss.
    Topk,
    /// A dense network (matched in compute unless the config says `dense_match = "params"`).
    Dense,
}

impl From<AlgoArg> for Algo {
    fn from(a: AlgoArg) -> Algo {
        match a {
            AlgoArg::Em => Algo::Em,
            AlgoArg::Reinforce => Algo::Reinforce,
            AlgoArg::Topk => Algo::Topk,
            AlgoArg::Dense => Algo::Dense,
        }
    }
}

/// Arguments of `modula train`. Flags override the `--config` file, which overrides the
/// defaults.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML file with top-level `task_name`, `seed`, `backend`, `threads` and sections `[task]`,
    /// `[model]`, `[train]` (see docs/cli.md); unknown keys are rejected.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Training algorithm [default: em].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub algo: Option<AlgoArg>,
    /// Seed of the task's data, the initialisation and training [default: 0].
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
    /// Training iterations, E-steps and M-steps together [default: 20000]. With `--resume`,
    /// the iteration to continue to.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// The run directory [default: runs/ALGO-SEED-TIMESTAMP, the timestamp in UTC].
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint and configuration.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// The backend: the CPU, or wgpu's best adapter (Vulkan, Metal or DX12; a GPU before a
    /// software adapter; `MODULA_WGPU_ADAPTER=NAME` picks one) [default: cpu; with `--resume`,
    /// the run's own backend].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// CPU backend threads; the CPU backend only, wgpu ignores them [default: all cores; with
    /// `--resume`, the run's own count].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// What a dense baseline is matched to: one module's compute, or the modular network's
    /// parameter count [default: the config's `train.dense_match`, else compute].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub dense_match: Option<DenseMatchArg>,
    /// Language modelling only: passes over the training split [default: the config's
    /// `train.epochs`]. With `--resume`, the epoch count to continue to.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Language modelling only: stop after this many minutes of wall time, with a checkpoint
    /// that `--resume` continues from.
    #[arg(long, value_name = "MINUTES")]
    pub max_minutes: Option<f64>,
}

/// What a dense baseline is matched to, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenseMatchArg {
    /// One module's width (the modular network's compute per input).
    Compute,
    /// The modular network's parameter count.
    Params,
}

impl From<DenseMatchArg> for DenseMatch {
    fn from(m: DenseMatchArg) -> DenseMatch {
        match m {
            DenseMatchArg::Compute => DenseMatch::Compute,
            DenseMatchArg::Params => DenseMatch::Params,
        }
    }
}

/// Runs `modula train`.
///
/// # Errors
/// A [`CliError`] for a bad configuration or run directory, an unreadable checkpoint, a
/// diverged loss or a failed write.
pub fn run(args: TrainArgs) -> Result<(), CliError> {
    let lm_config = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let path = dir.join(CONFIG_FILE);
            path.is_file() && lm::is_lm_config(&path)?
        }
        (None, Some(path)) => lm::is_lm_config(path)?,
        (None, None) => false,
    };
    if lm_config {
        return lm::run(args);
    }
    if args.epochs.is_some() || args.max_minutes.is_some() {
        return Err(run_error(
            "--epochs and --max-minutes bound language-modelling runs (a config with task_name = \"ptb\"); the toy task counts --steps",
        ));
    }
    let (cfg, dir, resuming) = match &args.resume {
        Some(dir) => {
            let mut cfg = run::read_run_config(dir)?;
            if let Some(steps) = args.steps {
                cfg.train.steps = steps as usize;
            }
            if let Some(threads) = args.threads {
                cfg.threads = threads as usize;
            }
            if let Some(backend) = args.backend {
                cfg.backend = backend;
            }
            cfg.validate()?;
            (cfg, dir.clone(), true)
        }
        None => {
            let mut cfg = match &args.config {
                Some(path) => RunConfig::read(path)?,
                None => RunConfig::default(),
            };
            if let Some(algo) = args.algo {
                cfg.train.algo = algo.into();
            }
            if let Some(seed) = args.seed {
                cfg.seed = seed;
            }
            if let Some(m) = args.dense_match {
                cfg.train.dense_match = m.into();
            }
            if let Some(steps) = args.steps {
                cfg.train.steps = steps as usize;
            }
            if let Some(threads) = args.threads {
                cfg.threads = threads as usize;
            }
            if let Some(backend) = args.backend {
                cfg.backend = backend;
            }
            if cfg.threads == 0 {
                cfg.threads = run::all_cores();
            }
            cfg.validate()?;
            let dir = match &args.out {
                Some(dir) => dir.clone(),
                None => default_run_dir(cfg.train.algo.name(), cfg.seed),
            };
            prepare_fresh_dir(&dir)?;
            (cfg, dir, false)
        }
    };
    run::on_backend(cfg.backend, cfg.threads, Job { cfg, dir, resuming })
}

/// A resolved training command, waiting for its backend.
struct Job {
    cfg: RunConfig,
    dir: PathBuf,
    resuming: bool,
}

impl OnBackend for Job {
    fn run<B: Backend>(self, backend: B, device: DeviceInfo) -> Result<(), CliError> {
        Training::start(backend, device, self.cfg, self.dir, self.resuming)?.run()
    }
}

/// `runs/<name>-<seed>-<UTC timestamp>`, with a numeric suffix if that already exists.
pub(crate) fn default_run_dir(name: &str, seed: u64) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{name}-{seed}-{}", utc_timestamp(secs));
    let runs = Path::new("runs");
    let mut dir = runs.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = runs.join(format!("{base}-{n}"));
        n += 1;
    }
    dir
}

/// `YYYYMMDD-HHMMSS` in UTC for seconds since the Unix epoch (civil-from-days conversion, so
/// no date library is needed for one file name).
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Creates the directory of a new run; an existing run there is never overwritten.
pub(crate) fn prepare_fresh_dir(dir: &Path) -> Result<(), CliError> {
    if dir.join(CONFIG_FILE).exists() || run::checkpoint_path(dir).exists() {
        return Err(run_error(format!(
            "{} already holds a run; continue it with `modula train --resume {}` or choose another --out",
            dir.display(),
            dir.display()
        )));
    }
    fs::create_dir_all(dir).map_err(|e| {
        run_error(format!(
            "cannot create run directory {}: {e}",
            dir.display()
        ))
    })
}

/// Statistics accumulated over one logging interval. It is saved in every checkpoint, so a
/// resumed run logs exactly what the uninterrupted run would even when a checkpoint falls
/// inside an interval.
#[derive(Clone, Debug, Default, PartialEq)]
struct Interval {
    gradient_steps: u64,
    task_nll: f64,
    ctrl_nll: f64,
    entropy_steps: u64,
    mean_entropy: f64,
    batch_entropy: f64,
    usage: Vec<Vec<u64>>,
    /// Fraction of `a*` changed by the latest E-step; it carries over between intervals.
    changed: Option<f64>,
}

/// The checkpoint form of [`Interval`]: floats as their bit patterns, so that restoring is
/// exact whatever the JSON parser does with decimals.
#[derive(Serialize, Deserialize)]
struct StoredInterval {
    gradient_steps: u64,
    task_nll: u64,
    ctrl_nll: u64,
    entropy_steps: u64,
    mean_entropy: u64,
    batch_entropy: u64,
    usage: Vec<Vec<u64>>,
    changed: Option<u64>,
}

impl Interval {
    fn add_gradient(&mut self, s: &StepStats) {
        self.gradient_steps += 1;
        self.task_nll += s.task_nll;
        self.ctrl_nll += s.ctrl_nll;
        if let Some(c) = &s.controller {
            self.entropy_steps += 1;
            self.mean_entropy += c.mean_entropy;
            self.batch_entropy += c.batch_entropy;
        }
        if self.usage.len() < s.usage.len() {
            self.usage.resize(s.usage.len(), Vec::new());
        }
        for (acc, u) in self.usage.iter_mut().zip(&s.usage) {
            if acc.len() < u.len() {
                acc.resize(u.len(), 0);
            }
            acc.iter_mut().zip(u).for_each(|(a, &b)| *a += b);
        }
    }

    fn add_e_step(&mut self, e: &EStats) {
        self.changed = Some(e.changed);
    }

    /// Empties the interval, keeping the latest E-step's figure.
    fn reset(&mut self) {
        *self = Interval {
            changed: self.changed,
            ..Interval::default()
        };
    }

    fn mean(sum: f64, n: u64) -> Option<f64> {
        (n > 0).then(|| sum / n as f64)
    }

    fn to_meta(&self) -> String {
        let stored = StoredInterval {
            gradient_steps: self.gradient_steps,
            task_nll: self.task_nll.to_bits(),
            ctrl_nll: self.ctrl_nll.to_bits(),
            entropy_steps: self.entropy_steps,
            mean_entropy: self.mean_entropy.to_bits(),
            batch_entropy: self.batch_entropy.to_bits(),
            usage: self.usage.clone(),
            changed: self.changed.map(f64::to_bits),
        };
        serde_json::to_string(&stored).expect("the interval serialises")
    }

    fn from_meta(text: &str) -> Option<Self> {
        let s: StoredInterval = serde_json::from_str(text).ok()?;
        Some(Interval {
            gradient_steps: s.gradient_steps,
            task_nll: f64::from_bits(s.task_nll),
            ctrl_nll: f64::from_bits(s.ctrl_nll),
            entropy_steps: s.entropy_steps,
            mean_entropy: f64::from_bits(s.mean_entropy),
            batch_entropy: f64::from_bits(s.batch_entropy),
            usage: s.usage,
            changed: s.changed.map(f64::from_bits),
        })
    }
}

/// One line of `metrics.jsonl`: the training statistics of a logging interval and the test
/// figures at its end. Means over an interval without gradient steps are `null`.
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
    /// Training examples per second over the interval (wall clock).
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

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The task's name.
    pub task: String,
    /// The algorithm's name.
    pub algo: String,
    /// Iterations completed.
    pub steps: u64,
    /// Wall-clock seconds of training, over all resumed parts.
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

/// How progress is shown: a live bar on a terminal, plain lines otherwise.
pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines { total: u64 },
}

impl Progress {
    pub(crate) fn new(total: u64, position: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} (eta {eta}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_position(position);
            Progress::Bar(bar)
        } else {
            Progress::Lines { total }
        }
    }

    pub(crate) fn tick(&self, step: u64) {
        if let Progress::Bar(bar) = self {
            bar.set_position(step);
        }
    }

    fn log(&self, r: &MetricRecord) {
        let loss = r.task_nll.map_or("-".to_string(), |v| format!("{v:.3}"));
        self.note(
            format!(
                "loss {loss} test MSE {:.4} eff {:.2}",
                r.test_mse, r.effective_modules
            ),
            format!(
                "step {}: loss {loss}, test MSE {:.4}, purity {:.3}, effective modules {:.2}, {:.0} examples/s",
                r.step, r.test_mse, r.purity, r.effective_modules, r.examples_per_s
            ),
        );
    }

    /// Shows `short` beside the bar on a terminal; otherwise prints `line` with the total.
    pub(crate) fn note(&self, short: String, line: String) {
        match self {
            Progress::Bar(bar) => bar.set_message(short),
            Progress::Lines { total } => eprintln!("{line} (of {total})"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// A run in progress: the experiment, its directory and the logging state.
struct Training<B: Backend> {
    cfg: RunConfig,
    device: DeviceInfo,
    dir: PathBuf,
    exp: ToyExperiment<B>,
    interval: Interval,
    records: Vec<MetricRecord>,
    metrics: File,
    /// Training seconds before this process started (from the checkpoint when resuming).
    seconds_before: f64,
    /// Step of the checkpoint on disk, for the divergence message.
    checkpoint_step: u64,
    linear_baseline_mse: f64,
}

impl<B: Backend> Training<B> {
    /// Builds the experiment on `backend` and, when resuming, restores it and trims
    /// `metrics.jsonl` to the checkpoint's step.
    fn start(
        backend: B,
        device: DeviceInfo,
        cfg: RunConfig,
        dir: PathBuf,
        resuming: bool,
    ) -> Result<Self, CliError> {
        let mut exp = cfg.build(backend);
        let linear_baseline_mse = exp.task.linear_baseline_mse();
        let metrics_path = dir.join(METRICS_FILE);
        let (interval, records, seconds_before) = if resuming {
            let ck = run::restore_checkpoint(&mut exp, &dir)?;
            let step = exp.trainer.step;
            if step > cfg.train.steps as u64 {
                return Err(run_error(format!(
                    "the checkpoint in {} is at step {step}, beyond train.steps = {}; pass a larger --steps",
                    dir.display(),
                    cfg.train.steps
                )));
            }
            let interval = ck
                .metadata
                .get(META_INTERVAL)
                .and_then(|s| Interval::from_meta(s))
                .ok_or_else(|| {
                    run_error(format!(
                        "checkpoint {} lacks the CLI's `{META_INTERVAL}` metadata; it was not written by `modula train`",
                        run::checkpoint_path(&dir).display()
                    ))
                })?;
            let seconds = ck
                .metadata
                .get(META_SECONDS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            let records = trim_metrics(&metrics_path, step)?;
            (interval, records, seconds)
        } else {
            (Interval::default(), Vec::new(), 0.0)
        };
        write_file(&dir.join(CONFIG_FILE), &cfg.to_toml())?;
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| run_error(format!("cannot open {}: {e}", metrics_path.display())))?;
        let checkpoint_step = exp.trainer.step;
        let mut training = Training {
            cfg,
            device,
            dir,
            exp,
            interval,
            records,
            metrics,
            seconds_before,
            checkpoint_step,
            linear_baseline_mse,
        };
        if !resuming {
            // A checkpoint at step 0 means there is always a last good state to keep if the
            // loss diverges, and a run killed early can still be resumed.
            training.save_checkpoint(0.0)?;
        }
        Ok(training)
    }

    fn run(mut self) -> Result<(), CliError> {
        let total = self.cfg.train.steps as u64;
        let (log_every, ckpt_every) = (
            self.cfg.train.log_every as u64,
            self.cfg.train.checkpoint_every as u64,
        );
        let batch = self.cfg.train.batch_size as u64;
        let start = Instant::now();
        let mut interval_start = Instant::now();
        let mut interval_examples = 0u64;
        eprintln!(
            "modula train: {} on the {} task, seed {}, {}, {} steps; run directory {}",
            self.cfg.train.algo.name(),
            self.cfg.task_name,
            self.cfg.seed,
            self.device.describe(self.cfg.threads),
            total,
            self.dir.display()
        );
        let progress = Progress::new(total, self.exp.trainer.step);
        while self.exp.trainer.step < total {
            match self.exp.trainer.step() {
                Ok(StepOutcome::EStep(e)) => self.interval.add_e_step(&e),
                Ok(StepOutcome::Gradient(s)) => self.interval.add_gradient(&s),
                Err(e) => {
                    progress.finish();
                    return Err(run::training_error(
                        e,
                        "step",
                        self.checkpoint_step,
                        &self.dir,
                    ));
                }
            }
            interval_examples += batch;
            let step = self.exp.trainer.step;
            progress.tick(step);
            if step.is_multiple_of(log_every) || step == total {
                let elapsed = interval_start.elapsed().as_secs_f64();
                let record = self.record(interval_examples as f64 / elapsed.max(1e-9))?;
                progress.log(&record);
                interval_start = Instant::now();
                interval_examples = 0;
            }
            if step.is_multiple_of(ckpt_every) || step == total {
                self.save_checkpoint(start.elapsed().as_secs_f64())?;
            }
        }
        progress.finish();
        let seconds = self.seconds_before + start.elapsed().as_secs_f64();
        self.finish(seconds)
    }

    /// Evaluates on the test split, appends the interval's line to `metrics.jsonl` and
    /// starts the next interval.
    fn record(&mut self, examples_per_s: f64) -> Result<MetricRecord, CliError> {
        let eval = self
            .exp
            .evaluate()
            .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
        let iv = &self.interval;
        let record = MetricRecord {
            step: self.exp.trainer.step,
            task_nll: Interval::mean(iv.task_nll, iv.gradient_steps),
            ctrl_nll: Interval::mean(iv.ctrl_nll, iv.gradient_steps),
            controller_perplexity: Interval::mean(iv.mean_entropy, iv.entropy_steps).map(f64::exp),
            batch_perplexity: Interval::mean(iv.batch_entropy, iv.entropy_steps).map(f64::exp),
            usage: iv.usage.clone(),
            changed: iv.changed,
            examples_per_s,
            test_mse: eval.test_mse,
            test_nll: eval.test_nll,
            purity: eval.purity,
            effective_modules: eval.effective_modules,
        };
        let line = serde_json::to_string(&record).expect("a record serialises");
        writeln!(self.metrics, "{line}")
            .and_then(|()| self.metrics.flush())
            .map_err(|e| run_error(format!("cannot write {METRICS_FILE}: {e}")))?;
        self.interval.reset();
        self.records.push(record.clone());
        Ok(record)
    }

    /// Writes the trainer's checkpoint with the configuration, the open interval and the
    /// seconds spent so far (atomically: a crash leaves the previous checkpoint).
    fn save_checkpoint(&mut self, seconds_here: f64) -> Result<(), CliError> {
        let mut ck: Checkpoint = self
            .exp
            .trainer
            .checkpoint()
            .map_err(|e| run_error(e.to_string()))?;
        ck.metadata.insert(META_CONFIG.into(), self.cfg.to_toml());
        ck.metadata
            .insert(META_INTERVAL.into(), self.interval.to_meta());
        ck.metadata.insert(
            META_SECONDS.into(),
            format!("{:?}", self.seconds_before + seconds_here),
        );
        ck.write(run::checkpoint_path(&self.dir))
            .map_err(|e| run_error(e.to_string()))?;
        self.checkpoint_step = self.exp.trainer.step;
        Ok(())
    }

    /// Writes `summary.json` and the plots, and prints the figures.
    fn finish(self, seconds: f64) -> Result<(), CliError> {
        let eval = self
            .exp
            .evaluate()
            .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
        let t = &self.exp.trainer;
        let summary = Summary {
            task: self.cfg.task_name.clone(),
            algo: self.cfg.train.algo.name().to_string(),
            steps: t.step,
            seconds,
            seed: self.cfg.seed,
            threads: self.cfg.threads,
            device: self.device.clone(),
            parameters: t.params.num_scalars(&t.backend),
            figures: Figures::new(&eval, self.linear_baseline_mse),
        };
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        write_file(&self.dir.join(SUMMARY_FILE), &(json + "\n"))?;
        let plots = plot::write_all(&self.dir, &self.records, self.linear_baseline_mse)
            .map_err(|e| run_error(format!("cannot draw the plots: {e}")))?;
        println!(
            "{} on the {} task: {} steps in {:.1} s ({}, seed {}, {} parameters)",
            summary.algo,
            summary.task,
            summary.steps,
            summary.seconds,
            self.device.describe(summary.threads),
            summary.seed,
            summary.parameters
        );
        println!("{}", summary.figures.text());
        println!("run directory: {}", self.dir.display());
        println!(
            "  {CONFIG_FILE}, {METRICS_FILE}, {}, {SUMMARY_FILE}, {}",
            run::CHECKPOINT_FILE,
            plots.join(", ")
        );
        Ok(())
    }
}

/// Writes a whole file, naming it in the error.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), CliError> {
    fs::write(path, text).map_err(|e| run_error(format!("cannot write {}: {e}", path.display())))
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a killed run may have logged past its
/// last checkpoint, and may have left a torn last line), rewrites the file with them and
/// returns them.
fn trim_metrics(path: &Path, step: u64) -> Result<Vec<MetricRecord>, CliError> {
    let mut records = Vec::new();
    if path.exists() {
        let file = File::open(path)
            .map_err(|e| run_error(format!("cannot read {}: {e}", path.display())))?;
        for line in BufReader::new(file).lines() {
            let line =
                line.map_err(|e| run_error(format!("cannot read {}: {e}", path.display())))?;
            match serde_json::from_str::<MetricRecord>(&line) {
                Ok(r) if r.step <= step => records.push(r),
                // Lines past the checkpoint will be logged again; a torn line is dropped.
                _ => {}
            }
        }
    }
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).expect("a record serialises"));
        text.push('\n');
    }
    write_file(path, &text)?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc_timestamp(1_709_210_096), "20240229-123456");
    }

    #[test]
    fn intervals_survive_checkpoint_metadata_exactly() {
        let iv = Interval {
            gradient_steps: 3,
            task_nll: 0.1 + 0.2,
            ctrl_nll: -1.0 / 3.0,
            entropy_steps: 3,
            mean_entropy: std::f64::consts::PI,
            batch_entropy: 1e-300,
            usage: vec![vec![1, 2, 3]],
            changed: Some(0.125),
        };
        assert_eq!(Interval::from_meta(&iv.to_meta()), Some(iv));
    }
}
