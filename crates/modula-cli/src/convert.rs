//! `modula convert`: a trained dense ReLU network made modular (its neurons' groups the
//! modules, its routers the gates), written as a new run, through `modula_run::convert`.

use std::path::PathBuf;

use clap::Args;
use modula_em::Algo;
use modula_run::convert::ConvertOptions;
use modula_run::{BackendKind, DeviceInfo, RunError, console, run_error};
use modula_sparse::SparseBackend;

use crate::backend::{OnBackend, on_backend, threads_arg};
use crate::train::algo_names;

/// Arguments of `modula convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The trained image run of the fully connected ReLU network (`model.kind = "mlp"`).
    #[arg(long, value_name = "DENSE_RUN")]
    pub run: PathBuf,
    /// Groups per hidden layer, `M` (it must divide every hidden width).
    #[arg(long, default_value_t = 32)]
    pub modules: usize,
    /// Groups computed per image, `K`.
    #[arg(long)]
    pub k: usize,
    /// How the neurons are grouped: metis, kmeans, random or blocks.
    #[arg(long, default_value = "metis")]
    pub method: String,
    /// The algorithm the new run continues with (`modula train --resume`).
    #[arg(long, value_parser = algo_names(), default_value = "em")]
    pub algo: String,
    /// Epochs the new run trains when resumed.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Seeds the partition and the routers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Passes over the training images that train the routers.
    #[arg(long, default_value_t = 3)]
    pub router_epochs: usize,
    /// Training images counted and routed on (0: the run's whole training set).
    #[arg(long, default_value_t = 0)]
    pub train_examples: usize,
    /// CPU threads.
    #[arg(long, value_parser = threads_arg, default_value = "1")]
    pub threads: u64,
    /// The new run's directory (new, or empty).
    #[arg(long, value_name = "NEW_RUN")]
    pub out: PathBuf,
}

/// Runs `modula convert` on the CPU backend.
///
/// # Errors
/// A [`RunError`] for an unknown method, or what the conversion fails on.
pub fn run(args: ConvertArgs) -> Result<(), RunError> {
    let method = modula_cluster::Method::from_name(&args.method).ok_or_else(|| {
        run_error(format!(
            "--method names {:?}; use metis, kmeans, random or blocks",
            args.method
        ))
    })?;
    let options = ConvertOptions {
        modules: args.modules,
        k: args.k,
        method,
        algo: Algo::from_name(&args.algo).expect("clap accepts only algorithm names"),
        epochs: args.epochs,
        seed: args.seed,
        router_epochs: args.router_epochs,
        train_examples: args.train_examples,
        out: args.out,
    };
    on_backend(
        BackendKind::Cpu,
        args.threads as usize,
        Job {
            dense: args.run,
            options,
        },
    )
}

/// A resolved conversion, waiting for its backend.
struct Job {
    dense: PathBuf,
    options: ConvertOptions,
}

impl OnBackend for Job {
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError> {
        let c = modula_run::convert::convert(backend, device, &self.dense, &self.options)?;
        console::print(&format!(
            "converted {} into {} groups of each hidden layer ({}), K = {}, {} to continue: modula train --resume {}\n",
            c.dense_run,
            c.modules,
            c.method,
            c.k,
            c.algo,
            self.options.out.display()
        ))
    }
}
