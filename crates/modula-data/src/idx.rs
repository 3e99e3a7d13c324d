//! IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//!
//! An IDX file is a 4-byte magic number (`0x00 0x00`, an element-type code, the number of
//! dimensions), one big-endian `u32` per dimension, then the elements in row-major order.
//! Only unsigned bytes (type `0x08`), the type every MNIST-style file uses, are supported.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::dataset::{ImageDataset, ImageSet};
use crate::error::{DataError, Result, check_declared, read_file};

/// The element-type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// A decoded IDX array of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major; `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Encodes an array of bytes as an (uncompressed) IDX file.
///
/// # Panics
/// If `data.len()` is not the product of `dims`, if there are more than 255 dimensions, or if
/// a dimension does not fit in a `u32`.
#[track_caller]
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    assert_eq!(
        dims.iter().product::<usize>(),
        data.len(),
        "IDX data length must be the product of the dimensions"
    );
    let ndims = u8::try_from(dims.len()).expect("IDX files have at most 255 dimensions");
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend([0, 0, TYPE_U8, ndims]);
    for &d in dims {
        let d = u32::try_from(d).expect("IDX dimensions fit in a u32");
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Reads and decodes an IDX file, gzipped (detected by its magic bytes) or not.
///
/// # Errors
/// [`DataError::Missing`] and [`DataError::Io`] from reading, and everything [`parse`] reports.
pub fn read(path: &Path) -> Result<IdxArray> {
    let bytes = read_file(
        path,
        "pass the path of an IDX file, or run `modula data fetch`",
    )?;
    parse(path, &bytes)
}

/// Decodes the bytes of an IDX file, gzipped or not; `path` is used in error messages only.
///
/// # Errors
/// [`DataError::Empty`], [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::Dimensions`] (dimension fields that disagree with the data's length, or a
/// zero-dimensional array), and [`DataError::Format`] (a broken gzip stream or an element type
/// other than unsigned bytes).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "the IDX file".into(),
        });
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_stream(path, MultiGzDecoder::new(bytes), true)
    } else {
        parse_stream(path, bytes, false)
    }
}

/// Reads up to `buf.len()` bytes, returning how many arrived before the end of the stream.
fn read_up_to(path: &Path, reader: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "broken gzip stream: {e}; fetch the file again or pass it uncompressed"
                    ),
                });
            }
        }
    }
    Ok(filled)
}

fn parse_stream(path: &Path, mut reader: impl Read, gzipped: bool) -> Result<IdxArray> {
    let in_what = if gzipped {
        " (after gzip decompression)"
    } else {
        ""
    };
    let mut magic = [0u8; 4];
    let got = read_up_to(path, &mut reader, &mut magic)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("the IDX magic number{in_what}"),
            expected: 4,
            actual: got as u64,
        });
    }
    let bad_magic = || DataError::BadMagic {
        path: path.to_path_buf(),
        format: "IDX",
        found: format!(
            "{:02x} {:02x} {:02x} {:02x}",
            magic[0], magic[1], magic[2], magic[3]
        ),
        expected: "00 00 08 NN (unsigned bytes, NN dimensions)".into(),
    };
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad_magic());
    }
    match magic[2] {
        TYPE_U8 => {}
        0x09 | 0x0b | 0x0c | 0x0d | 0x0e => {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "IDX element type 0x{:02x} is not supported; only unsigned bytes (0x08), as in MNIST-style files, are",
                    magic[2]
                ),
            });
        }
        _ => return Err(bad_magic()),
    }
    let ndims = usize::from(magic[3]);
    if ndims == 0 {
        return Err(DataError::Dimensions {
            path: path.to_path_buf(),
            message: "the header declares zero dimensions".into(),
        });
    }
    let mut header = vec![0u8; 4 * ndims];
    let got = read_up_to(path, &mut reader, &mut header)?;
    if got < header.len() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("the IDX header with {ndims} dimensions{in_what}"),
            expected: 4 + header.len() as u64,
            actual: 4 + got as u64,
        });
    }
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let header_len = 4 + 4 * ndims as u64;
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::Dimensions {
            path: path.to_path_buf(),
            message: format!("dimensions {dims:?} describe more data than can exist"),
        })?;
    check_declared(path, &format!("the data of dimensions {dims:?}"), expected)?;
    // Reading one byte past the promised length detects trailing data, so a stream that
    // holds more than its header declares (a decompression bomb) stops there; the buffer is
    // allocated once, at most MAX_DECODED_BYTES + 1.
    let mut data = Vec::with_capacity(expected as usize + 1);
    let mut limited = reader.by_ref().take(expected + 1);
    if let Err(e) = limited.read_to_end(&mut data) {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!("broken gzip stream: {e}; fetch the file again"),
        });
    }
    let actual = data.len() as u64;
    if actual < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("data of dimensions {dims:?}{in_what}"),
            expected: header_len + expected,
            actual: header_len + actual,
        });
    }
    if actual > expected {
        return Err(DataError::Dimensions {
            path: path.to_path_buf(),
            message: format!(
                "dimensions {dims:?} account for {} bytes but the file{in_what} holds more",
                header_len + expected
            ),
        });
    }
    Ok(IdxArray { dims, data })
}

/// Loads an image file (3 dimensions: count, rows, columns) and its label file (1 dimension)
/// as one split whose labels must be below `classes`.
///
/// # Errors
/// Everything [`read`] reports; [`DataError::Dimensions`] for arrays of the wrong rank;
/// [`DataError::Mismatch`] when the two counts differ; [`DataError::LabelOutOfRange`].
pub fn load_pair(
    images: &Path,
    labels: &Path,
    classes: usize,
    first_index: u64,
) -> Result<ImageSet> {
    let image_array = read(images)?;
    let label_array = read(labels)?;
    image_set(
        images,
        image_array,
        labels,
        label_array,
        classes,
        first_index,
    )
}

/// Builds a split from decoded image and label arrays; the paths are for messages.
///
/// # Errors
/// As [`load_pair`], without the reading errors.
pub fn image_set(
    images_path: &Path,
    images: IdxArray,
    labels_path: &Path,
    labels: IdxArray,
    classes: usize,
    first_index: u64,
) -> Result<ImageSet> {
    if images.dims.len() != 3 {
        return Err(DataError::Dimensions {
            path: images_path.to_path_buf(),
            message: format!(
                "an image file has 3 dimensions (count, rows, columns), this one {:?}",
                images.dims
            ),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::Dimensions {
            path: labels_path.to_path_buf(),
            message: format!(
                "a label file has 1 dimension (count), this one {:?}",
                labels.dims
            ),
        });
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::Mismatch {
            path: labels_path.to_path_buf(),
            message: format!(
                "{} labels but {} holds {} images; the two files belong to different splits",
                labels.dims[0],
                images_path.display(),
                images.dims[0]
            ),
        });
    }
    check_labels(labels_path, &labels.data, classes)?;
    Ok(ImageSet {
        height: images.dims[1],
        width: images.dims[2],
        channels: 1,
        classes,
        first_index,
        pixels: images.data,
        labels: labels.data,
    })
}

/// Checks every label against the class count.
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        Some(position) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            position,
            label: u32::from(labels[position]),
            classes: classes as u32,
        }),
        None => Ok(()),
    }
}

/// The class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The four files of an MNIST-style data set, without the optional `.gz` suffix.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds `name` or `name.gz` in `dir`; the reported path is the `.gz` one when neither exists.
pub(crate) fn find_maybe_gz(dir: &Path, name: &str) -> std::path::PathBuf {
    let plain = dir.join(name);
    if plain.is_file() {
        plain
    } else {
        dir.join(format!("{name}.gz"))
    }
}

/// Loads an MNIST-style directory (the four files of [`MNIST_FILES`], each raw or `.gz`) with
/// `class_names.len()` classes.
///
/// # Errors
/// As [`load_pair`], for either split.
pub fn load_dir(dir: &Path, class_names: &[&str]) -> Result<ImageDataset> {
    let classes = class_names.len();
    let train = load_pair(
        &find_maybe_gz(dir, MNIST_FILES[0]),
        &find_maybe_gz(dir, MNIST_FILES[1]),
        classes,
        0,
    )?;
    let test = load_pair(
        &find_maybe_gz(dir, MNIST_FILES[2]),
        &find_maybe_gz(dir, MNIST_FILES[3]),
        classes,
        train.labels.len() as u64,
    )?;
    Ok(ImageDataset {
        train,
        test: Some(test),
        class_names: class_names.iter().map(|s| s.to_string()).collect(),
    })
}
