//! Word-level language modelling with a modular GRU (Penn Treebank in the experiments): the
//! model, its configuration, and a trainer for EM over token positions and the baselines.
//!
//! EM for sequences follows the specification's recurrent use: each training token position
//! (its stable global index) has a stored selection `a*`; every `e_every` windows an E-step
//! scores, per stream, the stored path through the window against `samples - 1` paths sampled
//! ancestrally through time, by the window's summed `log p(w_{t+1} | ., a) + log p(a_t | .)`,
//! and keeps the best (ties keep the stored one). The M-step trains on the stored paths.

pub mod config;
pub mod model;
pub mod train;

pub use config::{LmModelConfig, LmTrainConfig, Recurrent};
pub use model::{Cell, LanguageModel, Routes, StepRouter, TopKGruCell, WindowCache, WindowOutput};
pub use train::{LmEval, LmTrainer, WindowStats};
