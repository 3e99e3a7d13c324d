//! `modula modularity`: whether a trained dense ReLU network's neurons form modules of their
//! own (co-activation partitions, exactly skippable groups, routed groups), through
//! `modula_run::modularity`.

use std::path::PathBuf;

use clap::Args;
use modula_run::modularity::ModularityOptions;
use modula_run::{BackendKind, DeviceInfo, RunError, run_error};
use modula_sparse::SparseBackend;

use crate::backend::{OnBackend, on_backend, threads_arg};

/// Arguments of `modula modularity`.
#[derive(Debug, Args)]
pub struct ModularityArgs {
    /// Trained image runs of the fully connected ReLU network (`model.kind = "mlp"`); the
    /// figure is drawn from the first.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Groups per hidden layer, `M` (it must divide every hidden width).
    #[arg(long, default_value_t = 32)]
    pub groups: usize,
    /// Partition methods, comma-separated: metis, kmeans, random, blocks (the layer's own
    /// order in consecutive blocks).
    #[arg(long, value_delimiter = ',', default_value = "metis,kmeans,random")]
    pub methods: Vec<String>,
    /// Seeds the partitions and the routers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training images counted and routed on (0: the run's whole training set).
    #[arg(long, default_value_t = 0)]
    pub train_examples: usize,
    /// Passes over those images that train the routers.
    #[arg(long, default_value_t = 3)]
    pub router_epochs: usize,
    /// Shares of the groups that the routed evaluation computes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5")]
    pub k_shares: Vec<f64>,
    /// CPU threads.
    #[arg(long, value_parser = threads_arg, default_value = "1")]
    pub threads: u64,
    /// Where to write report.md and the co-activation figures.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also write the results as JSON to FILE (the results.json beside the experiment's page).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Runs of neuron groups (written by `modula convert`, or trained from scratch with
    /// `model.kind = "groups"`) to tabulate against the dense runs.
    #[arg(long, value_delimiter = ',', value_name = "RUN")]
    pub converted: Vec<PathBuf>,
}

/// Runs `modula modularity` on the CPU backend.
///
/// # Errors
/// A [`RunError`] for an unknown method, a share outside (0, 1], or what the analysis fails on.
pub fn run(args: ModularityArgs) -> Result<(), RunError> {
    let methods = args
        .methods
        .iter()
        .map(|name| {
            modula_cluster::Method::from_name(name).ok_or_else(|| {
                run_error(format!(
                    "--methods names {name:?}; use metis, kmeans, random or blocks"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = args.k_shares.iter().find(|s| !(**s > 0.0 && **s <= 1.0)) {
        return Err(run_error(format!(
            "--k-shares holds {s}; each share of the groups must be in (0, 1]"
        )));
    }
    let options = ModularityOptions {
        groups: args.groups,
        methods,
        seed: args.seed,
        train_examples: args.train_examples,
        router_epochs: args.router_epochs,
        k_shares: args.k_shares,
        out: args.out,
        json: args.json,
        converted: args.converted,
    };
    on_backend(
        BackendKind::Cpu,
        args.threads as usize,
        Job {
            runs: args.runs,
            options,
        },
    )
}

/// A resolved analysis, waiting for its backend.
struct Job {
    runs: Vec<PathBuf>,
    options: ModularityOptions,
}

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        modula_run::modularity::modularity(backend, device, &self.runs, &self.options).map(|_| ())
    }
}
