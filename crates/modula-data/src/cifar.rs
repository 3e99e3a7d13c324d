//! CIFAR-10 binary batches (`data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`).
//!
//! Each file is a sequence of 3,073-byte records: one label byte, then 1,024 red, 1,024 green
//! and 1,024 blue bytes (channel-major, rows top to bottom). The loader converts each image to
//! the height-width-channel order modula uses, and [`encode`] converts back.

use std::path::{Path, PathBuf};

use crate::dataset::{ImageDataset, ImageSet};
use crate::error::{DataError, Result, read_file};
use crate::idx::check_labels;

/// Side length of a CIFAR-10 image.
pub const SIDE: usize = 32;
/// Bytes per record: a label and 3 x 32 x 32 pixels.
pub const RECORD: usize = 1 + 3 * SIDE * SIDE;
/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The training batches, in load order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch.
pub const TEST_FILE: &str = "test_batch.bin";

/// Decodes one binary batch; `path` is used in messages, `first_index` is the global index of
/// its first image.
///
/// # Errors
/// [`DataError::Empty`], [`DataError::RecordSize`] when the length is not a multiple of
/// [`RECORD`], and [`DataError::LabelOutOfRange`] for a label above 9.
pub fn parse(path: &Path, bytes: &[u8], first_index: u64) -> Result<ImageSet> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "the CIFAR-10 batch".into(),
        });
    }
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
        });
    }
    let count = bytes.len() / RECORD;
    let plane = SIDE * SIDE;
    let mut labels = Vec::with_capacity(count);
    let mut pixels = vec![0u8; count * 3 * plane];
    for (record, out) in bytes
        .chunks_exact(RECORD)
        .zip(pixels.chunks_exact_mut(3 * plane))
    {
        labels.push(record[0]);
        let (r, rest) = record[1..].split_at(plane);
        let (g, b) = rest.split_at(plane);
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = r[i];
            px[1] = g[i];
            px[2] = b[i];
        }
    }
    check_labels(path, &labels, CLASSES.len())?;
    Ok(ImageSet {
        height: SIDE,
        width: SIDE,
        channels: 3,
        classes: CLASSES.len(),
        first_index,
        pixels,
        labels,
    })
}

/// Encodes a 32 x 32 x 3 image set as a CIFAR-10 binary batch (the inverse of [`parse`]).
///
/// # Panics
/// If the images are not 32 x 32 with 3 channels.
#[track_caller]
pub fn encode(set: &ImageSet) -> Vec<u8> {
    assert!(
        set.height == SIDE && set.width == SIDE && set.channels == 3,
        "CIFAR-10 images are 32 x 32 x 3, not {} x {} x {}",
        set.height,
        set.width,
        set.channels
    );
    let plane = SIDE * SIDE;
    let mut out = Vec::with_capacity(set.labels.len() * RECORD);
    for (label, image) in set.labels.iter().zip(set.pixels.chunks_exact(3 * plane)) {
        out.push(*label);
        for c in 0..3 {
            out.extend(image.chunks_exact(3).map(|px| px[c]));
        }
    }
    out
}

/// Reads one binary batch.
///
/// # Errors
/// [`DataError::Missing`] or [`DataError::Io`], then everything [`parse`] reports.
pub fn read(path: &Path, first_index: u64) -> Result<ImageSet> {
    let bytes = read_file(path, HINT)?;
    parse(path, &bytes, first_index)
}

const HINT: &str = "no package registry ships CIFAR-10; run `modula data fetch cifar-10 --from DIR_OR_cifar-10-binary.tar.gz`";

/// The directory holding the batches: `dir` itself, or its `cifar-10-batches-bin`
/// subdirectory (the layout of the official archive).
pub fn batches_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("cifar-10-batches-bin");
    if nested.join(TEST_FILE).is_file() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Loads the five training batches and the test batch from `dir` (or its
/// `cifar-10-batches-bin` subdirectory).
///
/// # Errors
/// As [`read`], for any of the six files.
pub fn load_dir(dir: &Path) -> Result<ImageDataset> {
    let dir = batches_dir(dir);
    let mut train: Option<ImageSet> = None;
    for name in TRAIN_FILES {
        let first = train.as_ref().map_or(0, |t| t.labels.len() as u64);
        let batch = read(&dir.join(name), first)?;
        match &mut train {
            None => train = Some(batch),
            Some(t) => {
                t.pixels.extend_from_slice(&batch.pixels);
                t.labels.extend_from_slice(&batch.labels);
            }
        }
    }
    let train = train.expect("TRAIN_FILES is not empty");
    let test = read(&dir.join(TEST_FILE), train.labels.len() as u64)?;
    Ok(ImageDataset {
        train,
        test: Some(test),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}
