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
//! - [`toy`] and [`ToyExperiment`]: the generated decomposition task, end to end.
//!
//! EM on the toy task, from scratch (a short run; the default schedule is 20,000 steps):
//!
//! ```
//! use modula_em::toy::ToyConfig;
//! use modula_em::{ModelConfig, StepOutcome, ToyExperiment, TrainConfig};
//! use modula_tensor::Cpu;
//!
//! let task = ToyConfig { train: 512, test: 256, ..ToyConfig::default() };
//! let train = TrainConfig { steps: 200, batch_size: 64, ..TrainConfig::default() };
//! let mut run = ToyExperiment::new(Cpu::with_threads(1), &task, &ModelConfig::default(), &train, 0);
//! let mut e_steps = 0;
//! for _ in 0..train.steps {
//!     if let StepOutcome::EStep(stats) = run.trainer.step()? {
//!         assert!(stats.score_after >= stats.score_before);
//!         e_steps += 1;
//!     }
//! }
//! assert_eq!(e_steps, 20); // every 10th iteration
//! let eval = run.evaluate()?;
//! assert!(eval.test_mse.is_finite() && eval.purity > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod algo;
pub mod config;
mod experiment;
pub mod lm;
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
