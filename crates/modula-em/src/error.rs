//! Why training stops: a diverged loss, a device failure, or a checkpoint that cannot be read
//! or does not belong to the run.

use modula_nn::CheckpointError;
use modula_tensor::BackendError;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The loss became NaN or infinite; parameters were not updated at this step.
    #[error(
        "training diverged at step {step}: the loss is {value}; lower train.lr or set train.grad_clip"
    )]
    Diverged {
        /// The iteration whose loss was not finite.
        step: u64,
        /// The offending loss value.
        value: f64,
    },
    /// The loss stayed finite but rose far above the run's initial loss (see
    /// [`crate::DivergenceGuard`]); parameters were not updated at this step.
    #[error(
        "training diverged at step {step}: the loss is {value:.4e}, more than train.divergence_factor = {factor} times the initial loss's magnitude ({initial:.4}, counted as at least 1); lower train.lr or set train.grad_clip"
    )]
    LossExploded {
        /// The iteration whose loss was too high.
        step: u64,
        /// The offending loss value.
        value: f64,
        /// The run's initial loss.
        initial: f64,
        /// The factor that was exceeded.
        factor: f32,
    },
    /// The device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Data-parallel training failed: its setup does not allow it, or a collective failed.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// A checkpoint does not belong to this run's model or data.
    #[error("checkpoint {path} does not match this run: {problem}")]
    Mismatch {
        /// The checkpoint file.
        path: String,
        /// What differs.
        problem: String,
    },
}
