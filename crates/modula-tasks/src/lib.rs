#![doc = include_str!("../README.md")]

pub mod lm;
pub mod toy;

pub use lm::{LmData, LmEval, LmFiltered, LmTask, LmTrainConfig, TextConfig, upcycle};
pub use toy::{ToyEval, ToyTask, ToyTrainConfig};
