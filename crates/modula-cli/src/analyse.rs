//! `modula inspect` and `modula report`: the run library's introspection and report over
//! language-modelling runs.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use modula_run::dir::read_run_config;
use modula_run::inspect::InspectOptions;
use modula_run::{DeviceInfo, RunConfig, RunError};
use modula_sparse::SparseBackend;

use crate::backend::{OnBackend, on_backend};

/// Which split to inspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The validation split.
    Valid,
    /// The test split.
    Test,
}

/// Arguments of `modula inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A language-modelling run directory (`modula train --config configs/ptb-*.toml`).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The split to route.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// Over-represented words listed per module.
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    /// Only words seen at least this often in the split are ranked.
    #[arg(long, default_value_t = 30)]
    pub min_count: u32,
    /// Where to write inspect.md, inspect.json and the figures [default: the run directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `modula inspect`.
///
/// # Errors
/// A [`RunError`] for a missing, toy or dense run, unreadable data or checkpoint, or a failed
/// write.
pub fn inspect(args: InspectArgs) -> Result<(), RunError> {
    let mut cfg = read_run_config(&args.run)?;
    modula_run::start::fit_threads(&mut cfg)?;
    let options = InspectOptions {
        valid: args.split == SplitArg::Valid,
        top: args.top,
        min_count: args.min_count,
        out: args.out.clone().unwrap_or_else(|| args.run.clone()),
    };
    let (backend, threads) = (cfg.common().backend, cfg.common().threads);
    let job = Inspect {
        cfg,
        run: args.run,
        options,
    };
    on_backend(backend, threads, job)
}

struct Inspect {
    cfg: RunConfig,
    run: PathBuf,
    options: InspectOptions,
}

impl OnBackend for Inspect {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        modula_run::inspect::inspect(backend, device, &self.cfg, &self.run, &self.options)
    }
}

/// Arguments of `modula report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories with a `summary.json`: language-modelling runs, or image runs
    /// (fashion-mnist, mnist-10k, cifar-10), one kind at a time.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Where to write report.md and the figures (language models: curves.png/svg; image runs:
    /// accuracy, class_modules and sparsity as PNG and SVG).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also write every run's figures as JSON to FILE (for example a results.json beside an
    /// experiment's page).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs `modula report`.
///
/// # Errors
/// A [`RunError`] naming a run without a readable summary or metrics, or a failed write.
pub fn report(args: ReportArgs) -> Result<(), RunError> {
    modula_run::report::report(&args.runs, &args.out, args.json.as_deref())
}
