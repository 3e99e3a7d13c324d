//! `modula continual`: the continual-learning experiment ([`modula_run::continual`]).
//! `run` trains every method of a configuration for every seed into a directory (running it
//! again resumes: finished methods are kept); `report` tabulates the directory and writes
//! `results.json` and the figures.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use modula_run::continual::ContinualConfig;
use modula_run::{BackendKind, DeviceInfo, RunError, continual};
use modula_sparse::SparseBackend;

use crate::backend::{BackendArg, OnBackend, on_backend, threads_arg};

/// The `modula continual` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContinualCommand {
    /// Train every method of a configuration (configs/continual-*.toml) for every seed into
    /// a directory; finished methods are skipped, so the same command resumes a stopped
    /// experiment.
    Run(RunArgs),
    /// Print the tables of experiments' directories and write their results.json and figures.
    Report(ReportArgs),
}

impl ContinualCommand {
    /// The name error messages carry.
    pub fn name(&self) -> &'static str {
        match self {
            ContinualCommand::Run(_) => "continual run",
            ContinualCommand::Report(_) => "continual report",
        }
    }
}

/// Arguments of `modula continual run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment's TOML file: `seeds`, `[sequence]`, `[train]` and `[[methods]]` (see
    /// docs/experiments/continual.md); unknown keys are rejected.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The experiment's directory (holds config.toml and one METHOD-sSEED.json per finished
    /// method and seed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Run only this method (repeatable) [default: all].
    #[arg(long = "method", value_name = "NAME")]
    pub methods: Vec<String>,
    /// The backend [default: cpu].
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendArg,
    /// CPU backend threads [default: all cores].
    #[arg(long, value_parser = threads_arg)]
    pub threads: Option<u64>,
}

/// Arguments of `modula continual report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The experiments' directories.
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Write the reports as one JSON file here (e.g. docs/experiments/continual/results.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write each experiment's accuracy.png/.svg and usage.png/.svg into DIR/NAME/, NAME its
    /// directory's name.
    #[arg(long, value_name = "DIR")]
    pub figures: Option<PathBuf>,
}

/// Runs a `modula continual` subcommand.
///
/// # Errors
/// A bad configuration, missing data, a diverged run or a failed write.
pub fn run(command: ContinualCommand) -> Result<(), RunError> {
    match command {
        ContinualCommand::Run(args) => {
            let cfg = continual::read_config(&args.config)?;
            let threads = args.threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |t| t as usize,
            );
            let kind: BackendKind = args.backend.into();
            on_backend(kind, threads, Job { cfg, args })
        }
        ContinualCommand::Report(args) => {
            let reports = args
                .dirs
                .iter()
                .map(|d| continual::report(d).map(|r| (r, d.as_path())))
                .collect::<Result<Vec<_>, _>>()?;
            let written =
                continual::write(&reports, args.json.as_deref(), args.figures.as_deref())?;
            let mut out = std::io::stdout().lock();
            let closed = |_| RunError::OutputClosed {
                stream: "standard output",
            };
            for (report, _) in &reports {
                for (head, title) in [
                    (continual::Head::Shared, "shared head"),
                    (continual::Head::PerTask, "per-task head"),
                ] {
                    writeln!(
                        out,
                        "{}, {title}:\n\n{}",
                        report.name,
                        continual::table(report, head)
                    )
                    .map_err(closed)?;
                }
            }
            for file in written {
                writeln!(out, "wrote {file}").map_err(closed)?;
            }
            Ok(())
        }
    }
}

/// A `continual run` waiting for its backend.
struct Job {
    cfg: ContinualConfig,
    args: RunArgs,
}

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, _device: DeviceInfo) -> Result<(), RunError> {
        continual::run(backend, &self.cfg, &self.args.out, &self.args.methods)
    }
}
