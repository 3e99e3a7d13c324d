#![doc = include_str!("../README.md")]

mod comm;
mod data;
mod expert;
mod expert_gru;
#[cfg(feature = "mpi")]
mod mpi_comm;
mod replicas;
mod timed;

pub use comm::{Comm, LocalComm, Wire};
pub use data::{all_reduce_grads, shard_range};
pub use expert::{ExpertCache, ExpertLinear, GatheredLayer, local_modules};
pub use expert_gru::{ExpertGruCache, ExpertGruGrads, ExpertGruModules};
#[cfg(feature = "mpi")]
pub use mpi_comm::{DEFAULT_TIMEOUT, MpiComm};
pub use replicas::{DEFAULT_BUCKET, DataParallel};
pub use timed::{TimedComm, Traffic};

/// What can go wrong in distributed code that one rank can detect and report.
///
/// A failure inside MPI itself aborts the job under MPI's default error handler, so it never
/// reaches these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// MPI could not be initialized.
    #[error("MPI initialization failed: {0}")]
    Init(String),
    /// The counts or lengths given to a collective disagree with each other or with the
    /// group.
    #[error("collective arguments disagree: {0}")]
    Counts(String),
    /// A distributed layer or run was set up inconsistently (shapes, module count against
    /// rank count, another group).
    #[error("distributed setup: {0}")]
    Setup(String),
    /// The device behind the backend failed while moving tensors to or from the host.
    #[error(transparent)]
    Backend(#[from] modula_tensor::BackendError),
}
