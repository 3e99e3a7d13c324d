#![doc = include_str!("../README.md")]

pub mod algo;
pub mod config;
mod error;
pub mod estep;
pub mod ewc;
mod global;
mod guard;
mod meta;
pub mod model;
pub mod models;
mod replicas;
mod table;
pub mod task;
mod trainer;

pub use algo::{Algorithm, StepStats};
pub use config::{
    Algo, ConfigError, DenseMatch, EPath, EStepSettings, Search, TrainSettings, invalid,
};
pub use error::TrainError;
pub use estep::EStats;
pub use guard::{DEFAULT_DIVERGENCE_FACTOR, DivergenceGuard, Reference};
pub use meta::MetaReader;
pub use model::{
    Candidates, ControllerStats, Episodes, Forward, MASKED_LOGIT, Model, Router, Routes, Target,
    controller_stats, effective_count, usage_counts,
};
pub use replicas::Replicas;
pub use table::{AssignmentTable, LayerAssignments};
pub use task::{Batch, EStepDue, Group, Task};
pub use trainer::{Penalty, StepOutcome, Trainer, stream};
