#![doc = include_str!("../README.md")]

pub mod archive;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod info;
pub mod mnist_json;
pub mod text;
pub mod toy;

pub use dataset::{Dataset, Image, ImageBatch, ImageDataset, ImageSet, ShuffleBatcher};
pub use error::{DataError, MAX_DECODED_BYTES, MAX_FILE_BYTES, Result};
pub use fetch::{FetchOptions, Fetched, data_dir, fetch};
pub use info::{Format, Loaded, Resolved};
pub use text::{Streams, TextCorpus, TextOptions, Token, TokenSplit, Vocab, Window};
