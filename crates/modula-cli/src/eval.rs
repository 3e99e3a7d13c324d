//! `modula eval`: rebuilds a run's model from its `config.toml`, loads its checkpoint and
//! evaluates it greedily on its held-out splits (any task).

use std::path::PathBuf;

use clap::Args;
use modula_run::dir::read_run_config;
use modula_run::{DeviceInfo, RunConfig, RunError};
use modula_sparse::SparseBackend;

use crate::backend::{BackendArg, OnBackend, on_backend, threads_arg};

/// Arguments of `modula eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory (holding config.toml and checkpoint.safetensors).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The backend to evaluate on [default: the run's own backend].
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// CPU backend threads; wgpu ignores them [default: the run's own count, which
    /// reproduces its figures].
    #[arg(long, value_parser = threads_arg)]
    pub threads: Option<u64>,
}

/// Runs `modula eval`.
///
/// # Errors
/// A [`RunError`] when the directory holds no run or its checkpoint or data is missing,
/// truncated or from another configuration.
pub fn run(args: EvalArgs) -> Result<(), RunError> {
    let mut cfg = read_run_config(&args.run)?;
    cfg.apply(
        &modula_run::Overrides {
            backend: args.backend.map(Into::into),
            threads: args.threads.map(|t| t as usize),
            ..Default::default()
        },
        true,
    );
    modula_run::start::fit_threads(&mut cfg)?;
    let (backend, threads) = (cfg.common().backend, cfg.common().threads);
    on_backend(backend, threads, Job { cfg, args })
}

/// A resolved evaluation, waiting for its backend.
struct Job {
    cfg: RunConfig,
    args: EvalArgs,
}

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        let eval = modula_run::evaluate(backend, device, &self.cfg, &self.args.run)?;
        let text = if self.args.json {
            serde_json::to_string_pretty(&eval).expect("the evaluation serialises")
        } else {
            eval.text(&self.args.run, self.cfg.common().threads)
        };
        modula_run::console::print(&(text + "\n"))
    }
}
