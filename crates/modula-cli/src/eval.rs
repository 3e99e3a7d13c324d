//! `modula eval`: rebuilds a run's model from its `config.toml`, loads its checkpoint and
//! evaluates it greedily on the test split.

use std::path::PathBuf;

use clap::Args;
use modula_tensor::Backend;
use serde::Serialize;

use crate::run::{
    self, BackendKind, CliError, DeviceInfo, Figures, OnBackend, RunConfig, run_error,
};

/// Arguments of `modula eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory (holding config.toml and checkpoint.safetensors).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The backend to evaluate on: the CPU, or wgpu's best adapter (`MODULA_WGPU_ADAPTER=NAME`
    /// picks one) [default: the run's own backend].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// CPU backend threads; the CPU backend only, wgpu ignores them [default: the run's own
    /// count, which reproduces its figures].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
}

/// What `modula eval --json` prints: the run's identity and the same figures as its
/// `summary.json`.
#[derive(Debug, Serialize)]
struct Report {
    task: String,
    algo: String,
    /// The checkpoint's iteration.
    steps: u64,
    seed: u64,
    /// The backend evaluated on, and for wgpu its adapter.
    #[serde(flatten)]
    device: DeviceInfo,
    #[serde(flatten)]
    figures: Figures,
}

/// Runs `modula eval`.
///
/// # Errors
/// A [`CliError`] when the directory holds no run or its checkpoint is missing, truncated or
/// from another configuration.
pub fn run(args: EvalArgs) -> Result<(), CliError> {
    let mut cfg = run::read_run_config(&args.run)?;
    if let Some(threads) = args.threads {
        cfg.threads = threads as usize;
    }
    if let Some(backend) = args.backend {
        cfg.backend = backend;
    }
    run::on_backend(cfg.backend, cfg.threads, Job { cfg, args })
}

/// A resolved evaluation, waiting for its backend.
struct Job {
    cfg: RunConfig,
    args: EvalArgs,
}

impl OnBackend for Job {
    fn run<B: Backend>(self, backend: B, device: DeviceInfo) -> Result<(), CliError> {
        evaluate(backend, device, &self.cfg, &self.args)
    }
}

/// Rebuilds the run on `backend`, restores its checkpoint, evaluates and prints the figures.
fn evaluate<B: Backend>(
    backend: B,
    device: DeviceInfo,
    cfg: &RunConfig,
    args: &EvalArgs,
) -> Result<(), CliError> {
    let mut exp = cfg.build(backend);
    run::restore_checkpoint(&mut exp, &args.run)?;
    let eval = exp
        .evaluate()
        .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
    let report = Report {
        task: cfg.task_name.clone(),
        algo: cfg.train.algo.name().to_string(),
        steps: exp.trainer.step,
        seed: cfg.seed,
        device,
        figures: Figures::new(&eval, exp.task.linear_baseline_mse()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serialises")
        );
    } else {
        println!(
            "{} on the {} task, seed {}, checkpoint at step {} ({}), evaluated on {}",
            report.algo,
            report.task,
            report.seed,
            report.steps,
            run::checkpoint_path(&args.run).display(),
            report.device.describe(cfg.threads)
        );
        println!("{}", report.figures.text());
    }
    Ok(())
}
