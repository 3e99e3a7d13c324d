//! Generalized (Viterbi) EM training of modular networks, and the baselines it is compared
//! with: REINFORCE, noisy top-k gating, dense networks and uniformly random routing.
//!
//! - [`Model`]: what a network must offer (a routed forward pass with per-row likelihood
//!   terms, a backward pass for a weighted objective, candidate scoring for the E-step);
//!   [`models`] holds the networks that implement it.
//! - [`Task`]: what a task gives the trainer (batches with stable example keys, when the
//!   E-step runs, the state it carries); the concrete tasks live in `modula-tasks`.
//! - [`algo`]: one file per algorithm behind the object-safe [`Algorithm`] trait.
//! - [`estep`]: EM's E-step, written once for every model.
//! - [`Trainer`]: the one training loop's state for every task and algorithm, with exact
//!   checkpoints.
//! - [`AssignmentTable`]: the stored selection `a*` of every training example, per layer.

pub mod algo;
pub mod config;
mod error;
pub mod estep;
mod meta;
pub mod model;
pub mod models;
mod table;
pub mod task;
mod trainer;

pub use algo::{Algorithm, StepStats};
pub use config::{Algo, ConfigError, DenseMatch, TrainSettings, invalid};
pub use error::TrainError;
pub use estep::EStats;
pub use meta::MetaReader;
pub use model::{
    Candidates, ControllerStats, Episodes, Forward, Model, Router, Routes, Target,
    controller_stats, effective_count, usage_counts,
};
pub use table::{AssignmentTable, LayerAssignments};
pub use task::{Batch, EStepDue, Group, Task};
pub use trainer::{StepOutcome, Trainer, stream};
