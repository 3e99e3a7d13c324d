//! The crate's one error type.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong when reading, parsing or fetching a data set.
///
/// Every message names the file (or command) involved and says what to change, because these
/// errors are caused by files and machines a user controls, not by bugs in the caller.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file the loader needs does not exist.
    #[error("{}: file not found; {hint}", .path.display())]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do about it, e.g. the fetch command to run.
        hint: String,
    },
    /// The path names something that is not a regular file: a directory, a device, a pipe
    /// or a socket. Loaders read regular files only, whose size bounds what they allocate.
    #[error("{}: {kind}, not a regular file; the loaders read regular files only, so save the data to a file and pass that", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead (`a directory`, `a character device`, `a pipe (FIFO)`, ...).
        kind: &'static str,
    },
    /// A component of the path, taken as a directory, is a file.
    #[error("{}: {} is a file, not a directory; check the path (and --data-dir or MODULA_DATA)", .path.display(), .file.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// Its first component that is a file.
        file: PathBuf,
    },
    /// A file, or the data a header declares, is larger than this loader reads.
    #[error("{}: {what} is {size} bytes, more than the {limit} bytes this loader reads (larger than any data set it supports); the file is corrupt or of another format", .path.display())]
    TooLarge {
        /// The file involved.
        path: PathBuf,
        /// What is too large (`the file`, `the data its header declares`, ...).
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit, [`MAX_FILE_BYTES`] or [`MAX_DECODED_BYTES`].
        limit: u64,
    },
    /// Reading or writing a file failed for a reason other than its absence.
    #[error("{}: {source}; check the file's permissions and the disk", .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file ends before the data its header or record structure promises.
    #[error("{}: truncated: {what} needs {expected} bytes but only {actual} are present; fetch the file again", .path.display())]
    Truncated {
        /// The file involved.
        path: PathBuf,
        /// Which part is incomplete (a header, the pixel data, ...).
        what: String,
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file does not start with the magic number of its format.
    #[error("{}: wrong magic number {found} (expected {expected}); this is not a {format} file, so check the path or pass the right --format", .path.display())]
    BadMagic {
        /// The file involved.
        path: PathBuf,
        /// The format that was expected.
        format: &'static str,
        /// What the file starts with, in hex.
        found: String,
        /// What a valid file starts with.
        expected: String,
    },
    /// Dimension fields in a header disagree with the file's size or with the format's rules.
    #[error("{}: dimensions do not match the data: {message}; the file is corrupt or of another format", .path.display())]
    Dimensions {
        /// The file involved.
        path: PathBuf,
        /// Which dimensions and sizes disagree.
        message: String,
    },
    /// A class label is not below the number of classes.
    #[error("{}: label {label} of item {position} is out of range (the data set has {classes} classes); the label file is corrupt or belongs to another data set", .path.display())]
    LabelOutOfRange {
        /// The file involved.
        path: PathBuf,
        /// Zero-based position of the item in the file.
        position: usize,
        /// The label found.
        label: u32,
        /// The number of classes.
        classes: u32,
    },
    /// A CIFAR-10 binary batch whose size is not a whole number of 3,073-byte records.
    #[error("{}: {len} bytes is not a multiple of the 3,073-byte CIFAR-10 record (1 label byte + 3,072 pixels); the file is truncated or not a CIFAR-10 binary batch", .path.display())]
    RecordSize {
        /// The file involved.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// A text file that is not valid UTF-8.
    #[error("{}: not valid UTF-8 at byte {offset}; convert the file to UTF-8", .path.display())]
    NotUtf8 {
        /// The file involved.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A file (or data set split) that holds no data.
    #[error("{}: {what} is empty; fetch it again or point at a file with data", .path.display())]
    Empty {
        /// The file involved.
        path: PathBuf,
        /// What is empty (the file, the training split, ...).
        what: String,
    },
    /// A file's MD5 digest differs from the published one.
    #[error("{}: MD5 mismatch: expected {expected}, got {actual}; the source holds a different or corrupt copy, so fetch from another source (--from)", .path.display())]
    Checksum {
        /// The file (or archive member) involved.
        path: PathBuf,
        /// The published digest.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },
    /// Two files that must agree do not (for example image and label counts).
    #[error("{}: {message}", .path.display())]
    Mismatch {
        /// The file involved.
        path: PathBuf,
        /// What disagrees and with which other file.
        message: String,
    },
    /// Any other malformed content: bad JSON, a broken archive or gzip stream, an unsupported
    /// element type, a word missing from the vocabulary.
    #[error("{}: {message}", .path.display())]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What is wrong and what to change.
        message: String,
    },
    /// An external command a fetcher runs (pip, npm, apt-get) failed or is missing.
    #[error("`{command}` failed: {message}")]
    Tool {
        /// The command line.
        command: String,
        /// Its error output or why it could not start, and what to do instead.
        message: String,
    },
    /// A data set that cannot be fetched on this machine without help.
    #[error("{name}: {message}")]
    Unavailable {
        /// The data set's name.
        name: String,
        /// Why, and what to pass or run instead.
        message: String,
    },
    /// A data set name the fetchers and loaders do not know.
    #[error(
        "unknown data set `{name}`; known: ptb, fashion-mnist, mnist-10k, cifar-10 (or pass a path)"
    )]
    UnknownDataset {
        /// The name given.
        name: String,
    },
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// The file this error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Missing { path, .. }
            | DataError::NotAFile { path, .. }
            | DataError::NotADirectory { path, .. }
            | DataError::TooLarge { path, .. }
            | DataError::Io { path, .. }
            | DataError::Truncated { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::Dimensions { path, .. }
            | DataError::LabelOutOfRange { path, .. }
            | DataError::RecordSize { path, .. }
            | DataError::NotUtf8 { path, .. }
            | DataError::Empty { path, .. }
            | DataError::Checksum { path, .. }
            | DataError::Mismatch { path, .. }
            | DataError::Format { path, .. } => Some(path),
            DataError::Tool { .. }
            | DataError::Unavailable { .. }
            | DataError::UnknownDataset { .. } => None,
        }
    }
}

/// The largest file any loader or fetcher reads: 256 MiB. The largest file of a supported data
/// set (`cifar-10-binary.tar.gz`) is 163 MiB, Fashion-MNIST's training images 45 MiB, Penn
/// Treebank's training text 5 MiB.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// The most any loader decompresses from one stream (a gzipped IDX file, an archive member):
/// 256 MiB, checked against what the header declares before decompressing.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Checks that `declared` bytes (what a header or archive entry promises) are within
/// [`MAX_DECODED_BYTES`].
///
/// # Errors
/// [`DataError::TooLarge`] naming `what`.
pub(crate) fn check_declared(path: &Path, what: &str, declared: u64) -> Result<()> {
    if declared > MAX_DECODED_BYTES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            what: what.to_owned(),
            size: declared,
            limit: MAX_DECODED_BYTES,
        });
    }
    Ok(())
}

/// Checks that `path` is a regular file of at most [`MAX_FILE_BYTES`] and returns its size.
/// It never opens the file, so a pipe without a writer cannot block it.
///
/// # Errors
/// [`DataError::Missing`] (with `hint`), [`DataError::NotADirectory`], [`DataError::NotAFile`],
/// [`DataError::TooLarge`] or [`DataError::Io`].
pub(crate) fn regular_file_size(path: &Path, hint: &str) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e, hint))?;
    if !meta.is_file() {
        return Err(DataError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            what: "the file".into(),
            size: meta.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(meta.len())
}

/// Reads a whole regular file of at most [`MAX_FILE_BYTES`], allocating its size once; "not
/// found" becomes [`DataError::Missing`] with `hint`.
///
/// # Errors
/// As [`regular_file_size`], and [`DataError::Io`] when reading fails or the file grows while
/// it is read.
pub(crate) fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let len = regular_file_size(path, hint)?;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)
        .map_err(|e| io_error(path, e, hint))?
        .take(len + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > len {
        return Err(io(std::io::Error::other(
            "the file grew while it was read; read it again once it is complete",
        )));
    }
    Ok(bytes)
}

/// What a non-regular file is, in words.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a pipe (FIFO)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Maps an I/O error on `path` to the error that says what is wrong: [`DataError::Missing`]
/// with `hint`, [`DataError::NotADirectory`] when a component of the path is a file,
/// [`DataError::NotAFile`] for a directory, else [`DataError::Io`].
pub(crate) fn io_error(path: &Path, source: std::io::Error, hint: &str) -> DataError {
    use std::io::ErrorKind;
    // Creating `a/b` where `a` is a file fails with "already exists" or "not a directory".
    let file_ancestor = || {
        path.ancestors()
            .skip(1)
            .find(|a| a.is_file())
            .map(Path::to_path_buf)
    };
    match source.kind() {
        ErrorKind::NotFound => DataError::Missing {
            path: path.to_path_buf(),
            hint: hint.to_owned(),
        },
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists if file_ancestor().is_some() => {
            DataError::NotADirectory {
                path: path.to_path_buf(),
                file: file_ancestor().expect("checked above"),
            }
        }
        ErrorKind::AlreadyExists if path.is_file() => DataError::NotADirectory {
            path: path.to_path_buf(),
            file: path.to_path_buf(),
        },
        ErrorKind::IsADirectory => DataError::NotAFile {
            path: path.to_path_buf(),
            kind: "a directory",
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}
