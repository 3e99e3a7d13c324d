//! modula's training tasks, each a [`modula_em::Task`] for the one
//! [`modula_em::Trainer`]:
//!
//! - [`toy`]: regression on the generated toy decomposition data set with a modular MLP;
//! - [`lm`]: word-level language modelling with a modular GRU on Penn Treebank or on any
//!   plain-text corpus ([`lm::TextConfig`]).
//!
//! A task owns its data on the device, makes the batches (with the stable example keys EM's
//! assignment table needs), says when EM's E-step runs, carries its state between batches,
//! and evaluates a model on its held-out splits.

pub mod lm;
pub mod toy;

pub use lm::{LmData, LmEval, LmTask, LmTrainConfig, TextConfig};
pub use toy::{ToyEval, ToyTask, ToyTrainConfig};
