//! `modula train`: resolves the run's configuration (defaults, then `--config`, then flags,
//! or a run directory's own with `--resume`) and trains it into its run directory.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use modula_em::{Algo, DenseMatch};
use modula_run::dir::default_run_dir;
use modula_run::{DeviceInfo, Overrides, RunConfig, RunError, Start};
use modula_sparse::SparseBackend;

use crate::backend::{BackendArg, OnBackend, on_backend, threads_arg};

/// What a dense baseline is matched to, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenseMatchArg {
    /// One module's width (the modular network's compute per input).
    Compute,
    /// The modular network's parameter count.
    Params,
}

/// Arguments of `modula train`. Flags override the `--config` file, which overrides the
/// defaults.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML file whose `task_name` ("toy", "ptb", "text", "fashion-mnist", "mnist-10k" or
    /// "cifar-10") picks the task, with top-level
    /// `seed`, `backend`, `threads`, `max_minutes` and sections `[task]`, `[model]`,
    /// `[train]` (see docs/cli.md); unknown keys are rejected.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// The task, when no `--config` names one [default: toy].
    #[arg(long, value_parser = modula_run::TASKS, conflicts_with_all = ["resume", "config"])]
    pub task: Option<String>,
    /// Training algorithm: em, reinforce, topk, dense or uniform (see docs/em.md)
    /// [default: em].
    #[arg(long, value_parser = algo_names(), conflicts_with = "resume")]
    pub algo: Option<String>,
    /// Seed of the task's data, the initialisation and training [default: 0].
    #[arg(long, conflicts_with = "resume")]
    pub seed: Option<u64>,
    /// Iterations to train in total (toy: steps, E-steps and M-steps together, 20000 by
    /// default; language models: windows; image tasks: mini-batches, E-steps included). With
    /// `--resume`, the count to continue to.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Passes over the training split (toy: converted to steps). With `--resume`, the count to
    /// continue to.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// Stop after this many minutes of wall time, with a checkpoint that `--resume` continues
    /// from.
    #[arg(long, value_name = "MINUTES")]
    pub max_minutes: Option<f64>,
    /// The run directory [default: runs/NAME-SEED-TIMESTAMP, the timestamp in UTC].
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint and configuration.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// The backend: the CPU, or wgpu's best adapter (`MODULA_WGPU_ADAPTER=NAME` picks one)
    /// [default: cpu; with `--resume`, the run's own backend].
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// CPU backend threads, at most the machine's parallelism; wgpu ignores them [default:
    /// all cores; with `--resume`, the run's own count].
    #[arg(long, value_parser = threads_arg)]
    pub threads: Option<u64>,
    /// With `--resume`: continue even though `config.toml` changes fields that define what is
    /// trained (seed, learning rate, model, data, ...), recording each change in the run's
    /// `changes.jsonl`.
    #[arg(long, requires = "resume")]
    pub accept_config_change: bool,
    /// What a dense baseline is matched to: one module's compute, or the modular network's
    /// parameter count [default: the config's `train.dense_match`, else compute].
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub dense_match: Option<DenseMatchArg>,
}

/// The algorithms' names, from the one list `modula_em::Algo::ALL`.
/// The algorithms' names, as a clap value parser.
pub(crate) fn algo_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Algo::ALL.map(Algo::name))
}

/// Runs `modula train`.
///
/// # Errors
/// A [`RunError`] for a bad configuration or run directory, unreadable data or checkpoint, a
/// diverged loss or a failed write.
pub fn run(args: TrainArgs) -> Result<(), RunError> {
    let overrides = Overrides {
        algo: args.algo.as_deref().and_then(Algo::from_name),
        dense_match: args.dense_match.map(|m| match m {
            DenseMatchArg::Compute => DenseMatch::Compute,
            DenseMatchArg::Params => DenseMatch::Params,
        }),
        seed: args.seed,
        steps: args.steps,
        epochs: args.epochs,
        max_minutes: args.max_minutes,
        backend: args.backend.map(Into::into),
        threads: args.threads.map(|t| t as usize),
    };
    let start = match &args.resume {
        Some(dir) => Start::resume(dir, &overrides, args.accept_config_change)?,
        None => {
            let mut cfg = match (&args.config, &args.task) {
                (Some(path), _) => RunConfig::read(path)?,
                (None, task) => RunConfig::default_for(task.as_deref().unwrap_or("toy"))?,
            };
            cfg.apply(&overrides, false);
            cfg.validate()?;
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&cfg.name(), cfg.common().seed));
            Start::fresh(cfg, &dir)?
        }
    };
    let (backend, threads) = (start.cfg.common().backend, start.cfg.common().threads);
    on_backend(backend, threads, Job(start))
}

/// A prepared training command, waiting for its backend.
struct Job(Start);

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        modula_run::train(backend, device, self.0, modula_run::Hooks::default())
    }
}
