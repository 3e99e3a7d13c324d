//! Generalized (Viterbi) EM training of modular networks, and the baselines it is compared
//! with: REINFORCE, noisy top-k gating and dense networks.
//!
//! - [`AssignmentTable`]: the stored selection `a*` of every training example, per layer.
//! - [`algo`]: one iteration of each algorithm on a mini-batch ([`algo::e_step`],
//!   [`algo::m_step`], [`algo::reinforce_step`], [`algo::gated_step`]) and greedy
//!   [`algo::evaluate`].
//! - [`ModularModel`]: what a network must offer (routed forward with per-example likelihood
//!   terms, backward); [`ModularMlp`] implements it for stacks of modular linear layers.
//! - [`config`]: validated hyper-parameters.

pub mod algo;
pub mod config;
mod experiment;
mod mlp;
mod model;
mod table;
mod topk;
pub mod toy;
mod trainer;

pub use config::{Algo, ConfigError, DenseMatch, ModelConfig, TrainConfig};
pub use experiment::{ToyEval, ToyExperiment, effective_count};
pub use mlp::{Gate, MlpCache, MlpLayer, ModularMlp};
pub use model::{ControllerStats, ModularModel, Output, Router, Target, controller_stats};
pub use table::{AssignmentTable, LayerAssignments};
pub use topk::{TopKCache, TopKGate};
pub use trainer::{StepOutcome, TargetData, TrainData, TrainError, Trainer};
