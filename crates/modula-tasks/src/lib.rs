#![doc = include_str!("../README.md")]

pub mod images;
pub mod lm;
pub mod toy;

pub use images::{
    DispatchTiming, IMAGE_TASKS, ImageData, ImageEval, ImageTask, ImageTaskConfig,
    ImageTrainConfig, Split,
};
pub use lm::{LmData, LmEval, LmFiltered, LmTask, LmTrainConfig, TextConfig, upcycle};
pub use toy::{ToyEval, ToyTask, ToyTrainConfig};
