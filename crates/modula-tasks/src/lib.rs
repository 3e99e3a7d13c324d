#![doc = include_str!("../README.md")]

pub mod lm;
pub mod toy;

pub use lm::{LmData, LmEval, LmFiltered, LmTask, LmTrainConfig, TextConfig};
pub use toy::{ToyEval, ToyTask, ToyTrainConfig};
