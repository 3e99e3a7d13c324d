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
    /// Train on the ranks of an MPI job (`mpirun -np P modula train --dist data ...`): each
    /// rank trains its share of every batch, rank 0 writes the run directory (EM, REINFORCE
    /// and the dense baselines on the toy and image tasks so far; needs a modula built with
    /// `--features mpi`).
    #[arg(long, value_enum, conflicts_with = "accept_config_change")]
    pub dist: Option<DistArg>,
    /// With `--dist`: how many seconds a rank may wait for the others to reach a collective
    /// before the job is ended with the missing rank named (0: wait for ever; at most a day)
    /// [default: 50].
    #[arg(long, requires = "dist", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub dist_timeout: Option<u64>,
}

/// How a run is spread over the ranks of an MPI job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DistArg {
    /// Data parallelism: every rank holds the whole network and trains the examples it owns.
    Data,
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
    if args.dist.is_some() {
        return dist::run(&args, &overrides);
    }
    let start = prepare(&args, &overrides, |_| Ok(()))?;
    let (backend, threads) = (start.cfg.common().backend, start.cfg.common().threads);
    on_backend(backend, threads, Job(start))
}

/// The configuration `args` give a new run (defaults, then `--config`, then flags).
fn fresh_config(args: &TrainArgs, overrides: &Overrides) -> Result<RunConfig, RunError> {
    let mut cfg = match (&args.config, &args.task) {
        (Some(path), _) => RunConfig::read(path)?,
        (None, task) => RunConfig::default_for(task.as_deref().unwrap_or("toy"))?,
    };
    cfg.apply(overrides, false);
    cfg.validate()?;
    Ok(cfg)
}

/// The run `args` ask for, its directory taken: a new one, or the continuation of `--resume`.
/// `admit` may refuse a new run's configuration before its directory is created.
fn prepare(
    args: &TrainArgs,
    overrides: &Overrides,
    admit: impl Fn(&RunConfig) -> Result<(), RunError>,
) -> Result<Start, RunError> {
    match &args.resume {
        Some(dir) => Start::resume(dir, overrides, args.accept_config_change),
        None => {
            let cfg = fresh_config(args, overrides)?;
            admit(&cfg)?;
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| default_run_dir(&cfg.name(), cfg.common().seed));
            Start::fresh(cfg, &dir)
        }
    }
}

/// `--dist data` without MPI: this binary was built without the `mpi` feature.
#[cfg(not(feature = "mpi"))]
mod dist {
    use modula_run::{Overrides, RunError, run_error};

    use super::TrainArgs;

    pub fn run(_args: &TrainArgs, _overrides: &Overrides) -> Result<(), RunError> {
        Err(run_error(
            "--dist needs a modula built with MPI: install Debian's libopenmpi-dev, openmpi-bin \
             and libclang-dev, build with `cargo build --release -p modula-cli --features mpi` \
             and start it with `mpirun -np P modula train --dist data ...`"
                .to_string(),
        ))
    }
}

/// `--dist data`: this process is one rank of the MPI job that `mpirun` started.
#[cfg(feature = "mpi")]
mod dist {
    use std::rc::Rc;
    use std::time::Duration;

    use modula_dist::{DEFAULT_BUCKET, DataParallel, MpiComm};
    use modula_run::{DeviceInfo, Overrides, Rank, RunError, dir, run_error, start};
    use modula_sparse::SparseBackend;

    use super::{TrainArgs, fresh_config, prepare};
    use crate::backend::{OnBackend, on_backend};

    pub fn run(args: &TrainArgs, overrides: &Overrides) -> Result<(), RunError> {
        let mut comm = MpiComm::init().map_err(|e| run_error(e.to_string()))?;
        if let Some(secs) = args.dist_timeout {
            comm = comm.with_timeout((secs > 0).then(|| Duration::from_secs(secs)));
        }
        let comm = Rc::new(comm);
        let result = run_rank(args, overrides, Rc::clone(&comm));
        if result.is_err() {
            // Finalizing MPI would wait for the other ranks, which may be waiting in a
            // collective for this one: exit without it instead, which makes mpirun end the
            // whole job (naming this rank) after the error is printed.
            std::mem::forget(comm);
        }
        result
    }

    fn run_rank(
        args: &TrainArgs,
        overrides: &Overrides,
        comm: Rc<MpiComm>,
    ) -> Result<(), RunError> {
        let rank = if modula_dist::Comm::rank(&comm) == 0 {
            Rank::Lead(Box::new(prepare(
                args,
                overrides,
                modula_run::check_data_parallel,
            )?))
        } else {
            // The other ranks resolve the same configuration and read rank 0's checkpoint
            // without taking the directory; they write nothing.
            match &args.resume {
                Some(path) => {
                    let mut cfg = dir::read_run_config(path)?;
                    cfg.apply(overrides, true);
                    cfg.validate()?;
                    start::fit_threads(&mut cfg)?;
                    Rank::Follow {
                        checkpoint: dir::read_checkpoint(path).ok().map(Box::new),
                        cfg: Box::new(cfg),
                    }
                }
                None => {
                    let mut cfg = fresh_config(args, overrides)?;
                    start::fit_threads(&mut cfg)?;
                    Rank::Follow {
                        cfg: Box::new(cfg),
                        checkpoint: None,
                    }
                }
            }
        };
        let cfg = match &rank {
            Rank::Lead(start) => &start.cfg,
            Rank::Follow { cfg, .. } => cfg,
        };
        let (backend, threads) = (cfg.common().backend, cfg.common().threads);
        on_backend(backend, threads, RankJob { rank, comm })
    }

    /// A rank's part, waiting for its backend.
    struct RankJob {
        rank: Rank,
        comm: Rc<MpiComm>,
    }

    impl OnBackend for RankJob {
        fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
            let replicas = DataParallel::new(self.comm, DEFAULT_BUCKET)
                .map_err(|e| run_error(e.to_string()))?;
            modula_run::train_data_parallel(backend, device, self.rank, Box::new(replicas))
        }
    }
}

/// A prepared training command, waiting for its backend.
struct Job(Start);

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        modula_run::train(backend, device, self.0, modula_run::Hooks::default())
    }
}
