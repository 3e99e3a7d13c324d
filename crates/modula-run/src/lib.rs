#![doc = include_str!("../README.md")]

pub mod classes;
pub mod config;
pub mod console;
pub mod continual;
pub mod convert;
pub mod converted;
pub mod dir;
pub mod driver;
mod error;
pub mod fault;
mod files;
pub mod history;
pub mod images;
pub mod inspect;
pub mod lm;
mod lock;
pub mod memory;
pub mod modularity;
#[cfg(feature = "plots")]
pub mod plot;
pub mod records;
pub mod report;
pub mod report_images;
pub mod start;
pub mod toy;

use std::path::Path;

use modula_sparse::SparseBackend;
use serde::Serialize;

pub use config::{BackendKind, ImageRun, LmRun, Overrides, RunConfig, TASKS, ToyRun};
pub use dir::DeviceInfo;
pub use driver::Hooks;
pub use error::{RunError, config_error, run_error};
pub use lock::LOCK_FILE;
pub use start::{RunData, Start};

/// Trains the run `start` prepared ([`Start::fresh`] or [`Start::resume`]) on `backend`;
/// `hooks` say whether it prints and when it stops early (`Hooks::default()` prints
/// everything and runs to the run's bound, as `modula train` does).
///
/// # Errors
/// A run error for unreadable data or checkpoint, a diverged loss or a failed write, and
/// [`RunError::Interrupted`] when `hooks` stopped it.
pub fn train<B: SparseBackend>(
    backend: B,
    device: DeviceInfo,
    mut start: Start,
    hooks: Hooks<'_>,
) -> Result<(), RunError> {
    match start.cfg.clone() {
        RunConfig::Toy(run) => driver::train(toy::ToyJob::new(backend, device, &run), start, hooks),
        RunConfig::Image(run) => {
            let data = match start.data.take() {
                Some(RunData::Images(data)) => data,
                _ => images::load_data(&run)?,
            };
            let mut job = images::ImageJob::new(backend, device, &run, data);
            if start.checkpoint.is_none()
                && let Some(initial) = start.initial.take()
            {
                job.initialise(&initial)?;
            }
            driver::train(job, start, hooks)
        }
        RunConfig::Lm(run) => {
            let mut job = match start.data.take() {
                Some(RunData::Lm(data)) => lm::LmJob::with_data(backend, device, &run, data),
                _ => lm::LmJob::new(backend, device, &run)?,
            };
            if start.checkpoint.is_none() {
                job.upcycle()?;
            }
            driver::train(job, start, hooks)
        }
    }
}

/// A process's part in a data-parallel run (`modula train --dist data` under `mpirun`).
#[derive(Debug)]
pub enum Rank {
    /// Rank 0: it owns the run directory, as [`train`] does, and writes every file.
    Lead(Box<Start>),
    /// Any other rank: it trains the same configuration in step with rank 0 and writes
    /// nothing.
    Follow {
        /// The run's resolved configuration (as rank 0 resolves it).
        cfg: Box<RunConfig>,
        /// The run directory's checkpoint when the run continues from one.
        checkpoint: Option<Box<modula_nn::Checkpoint>>,
    },
}

/// Trains this process's part of a data-parallel run over `replicas` (every rank calls it
/// with its [`Rank`]): each rank trains the examples it owns of every batch, and rank 0 logs,
/// evaluates and writes the checkpoints, which hold the whole run in the one-process format.
///
/// # Errors
/// A run error for a task or algorithm that cannot be trained data-parallel yet (only EM,
/// REINFORCE and the dense baselines on the toy and image tasks can), and whatever [`train`]
/// returns.
pub fn train_data_parallel<B: SparseBackend>(
    backend: B,
    device: DeviceInfo,
    mut rank: Rank,
    replicas: Box<dyn modula_em::Replicas<B>>,
) -> Result<(), RunError> {
    let cfg = match &rank {
        Rank::Lead(start) => start.cfg.clone(),
        Rank::Follow { cfg, .. } => (**cfg).clone(),
    };
    check_data_parallel(&cfg)?;
    match cfg {
        RunConfig::Toy(run) => distributed(toy::ToyJob::new(backend, device, &run), rank, replicas),
        RunConfig::Image(run) => {
            // Every rank reads the data set itself (the files are on every machine).
            let data = match &mut rank {
                Rank::Lead(start) => match start.data.take() {
                    Some(RunData::Images(data)) => data,
                    _ => images::load_data(&run)?,
                },
                Rank::Follow { .. } => images::load_data(&run)?,
            };
            distributed(
                images::ImageJob::new(backend, device, &run, data),
                rank,
                replicas,
            )
        }
        RunConfig::Lm(_) => unreachable!("check_data_parallel refuses language models"),
    }
}

/// Runs `job` as this rank's part of a data-parallel run over `replicas`.
fn distributed<B: SparseBackend, J: driver::Job<B>>(
    mut job: J,
    rank: Rank,
    replicas: Box<dyn modula_em::Replicas<B>>,
) -> Result<(), RunError> {
    job.trainer_mut()
        .distribute(replicas)
        .map_err(|e| run_error(e.to_string()))?;
    match rank {
        Rank::Lead(start) => driver::train(job, *start, Hooks::default()),
        Rank::Follow { checkpoint, .. } => driver::follow(job, checkpoint.map(|c| *c)),
    }
}

/// Refuses a configuration `--dist data` cannot train yet (a language model, or an algorithm
/// that does not [distribute](modula_em::Algo::distributes)), naming the field. The command
/// line calls it before it takes a run directory, so that a refused run leaves nothing
/// behind.
///
/// # Errors
/// A [`RunError`] naming `task_name` or `train.algo` and what to change.
pub fn check_data_parallel(cfg: &RunConfig) -> Result<(), RunError> {
    let common = cfg.common();
    if matches!(cfg, RunConfig::Lm(_)) {
        return Err(run_error(format!(
            "--dist data trains the toy and image tasks only so far, not task_name = \"{}\"; train it without --dist",
            common.task_name
        )));
    }
    if !common.algo.distributes() {
        return Err(run_error(format!(
            "train.algo = \"{}\" cannot be trained data-parallel yet; use \"em\", \"dense\" or \"reinforce\", or train it without --dist",
            common.algo.name()
        )));
    }
    Ok(())
}

/// What `modula eval` reports: the run's identity and its greedy figures.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// The task.
    pub task: String,
    /// The algorithm.
    pub algo: String,
    /// The checkpoint's iteration.
    pub steps: u64,
    /// The run's seed.
    pub seed: u64,
    /// The backend evaluated on, and for wgpu its adapter.
    #[serde(flatten)]
    pub device: DeviceInfo,
    /// The figures, as in the run's `summary.json`.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The figures of an evaluation, by task.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Figures {
    /// A toy run's test figures.
    Toy(toy::Figures),
    /// An image run's greedy figures on the whole training and test sets.
    Image {
        /// Training accuracy.
        train_accuracy: f64,
        /// Test accuracy.
        test_accuracy: f64,
        /// Mean test cross-entropy.
        test_nll: f64,
        /// `exp` of the entropy of the first modular layer's test usage.
        effective_modules: Option<f64>,
        /// Per hidden layer, the fraction of exact zeros on the test set.
        zero_fraction: Vec<f64>,
        /// Per hidden layer, the fraction of all-zero blocks of 32 activations per example.
        block_zero_fraction: Vec<f64>,
    },
    /// A language model's greedy validation and test perplexities.
    Lm {
        /// Validation perplexity.
        valid_ppl: f64,
        /// Test perplexity.
        test_ppl: f64,
        /// Validation and test tokens scored (`train.eval_tokens` bounds them, as in the
        /// run's summary).
        eval_tokens: [usize; 2],
        /// `exp` of the entropy of the test split's module usage.
        effective_modules: Option<f64>,
        /// The filtered-mixture and posterior perplexities (controller-routed modular models).
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        filtered: Option<lm::Filtered>,
    },
}

impl Evaluation {
    /// The evaluation as human-readable lines.
    pub fn text(&self, dir: &Path, threads: usize) -> String {
        let head = format!(
            "{} on the {} task, seed {}, checkpoint at step {} ({}), evaluated on {}",
            self.algo,
            self.task,
            self.seed,
            self.steps,
            dir::checkpoint_path(dir).display(),
            self.device.describe(threads)
        );
        let figures = match &self.figures {
            Figures::Toy(f) => f.text(),
            Figures::Image {
                train_accuracy,
                test_accuracy,
                test_nll,
                effective_modules,
                zero_fraction,
                block_zero_fraction,
            } => format!(
                "train accuracy {train_accuracy:.4}, test accuracy {test_accuracy:.4}, test NLL {test_nll:.4}{}\nzero fraction per hidden layer (test) {zero_fraction:.3?}, all-zero blocks of 32 {block_zero_fraction:.3?}",
                effective_modules.map_or(String::new(), |e| format!(", {e:.2} effective modules")),
            ),
            Figures::Lm {
                valid_ppl,
                test_ppl,
                eval_tokens,
                effective_modules,
                filtered,
            } => format!(
                "valid ppl {valid_ppl:.2} ({} tokens), test ppl {test_ppl:.2} ({} tokens){}{}",
                eval_tokens[0],
                eval_tokens[1],
                effective_modules.map_or(String::new(), |e| format!(", {e:.2} effective modules")),
                filtered.as_ref().map_or(String::new(), |f| format!(
                    "\nfiltered mixture (a valid score, {} modules per token): valid ppl {:.2}, test ppl {:.2}; posterior routes (a diagnostic, not a valid score): valid ppl {:.2}, test ppl {:.2}",
                    f.mixture_routes, f.valid_ppl_mixture, f.test_ppl_mixture, f.valid_ppl_posterior, f.test_ppl_posterior
                ))
            ),
        };
        format!("{head}\n{figures}")
    }
}

/// Rebuilds the run in `dir` (configuration `cfg`) on `backend`, restores its checkpoint and
/// evaluates it greedily on its held-out splits.
///
/// # Errors
/// A run error when the checkpoint is missing, truncated or from another configuration, the
/// data cannot be loaded, or the model would not fit in memory.
pub fn evaluate<B: SparseBackend>(
    backend: B,
    device: DeviceInfo,
    cfg: &RunConfig,
    dir: &Path,
) -> Result<Evaluation, RunError> {
    let ck = dir::read_checkpoint(dir)?;
    let restore = |e: modula_em::TrainError| run_error(e.to_string());
    let common = cfg.common();
    let (steps, figures) = match cfg {
        RunConfig::Toy(run) => {
            memory::check(cfg, None)?;
            let mut job = toy::ToyJob::new(backend, device.clone(), run);
            job.trainer.restore(&ck).map_err(restore)?;
            (job.trainer.step, Figures::Toy(job.figures()?))
        }
        RunConfig::Image(run) => {
            memory::check(cfg, None)?;
            let data = images::load_data(run)?;
            let mut job = images::ImageJob::new(backend, device.clone(), run, data);
            job.trainer.restore(&ck).map_err(restore)?;
            let train = job.evaluate(modula_tasks::Split::Train(0))?;
            let test = job.evaluate(modula_tasks::Split::Test)?;
            let figures = Figures::Image {
                train_accuracy: train.accuracy,
                test_accuracy: test.accuracy,
                test_nll: test.nll,
                effective_modules: test
                    .effective_modules
                    .filter(|_| run.train.algo != modula_em::Algo::Dense),
                zero_fraction: test.zero_fraction,
                block_zero_fraction: test.block_zero_fraction,
            };
            (job.trainer.step, figures)
        }
        RunConfig::Lm(run) => {
            let mut job = lm::LmJob::new(backend, device.clone(), run)?;
            job.trainer.restore(&ck).map_err(restore)?;
            let limit = run.train.eval_tokens;
            let (valid, test) = (job.evaluate(true, limit)?, job.evaluate(false, limit)?);
            let figures = Figures::Lm {
                valid_ppl: valid.perplexity,
                test_ppl: test.perplexity,
                eval_tokens: [valid.tokens, test.tokens],
                effective_modules: lm::usage_perplexity(&test.usage),
                filtered: job.filtered(limit)?,
            };
            (job.trainer.step, figures)
        }
    };
    Ok(Evaluation {
        task: common.task_name.to_string(),
        algo: common.algo.name().to_string(),
        steps,
        seed: common.seed,
        device,
        figures,
    })
}
