//! Checkpoints in the [safetensors](https://github.com/huggingface/safetensors) format.
//!
//! Two levels:
//! - [`save_safetensors`] / [`load_safetensors`] write and restore every parameter of a
//!   [`ParamStore`], keyed by parameter name, as F32 tensors of shape `[rows, cols]`.
//! - [`Checkpoint`] is an in-memory file: any named tensors (F32, U16 or I64) plus string
//!   metadata. It is how callers store state beyond the parameters (optimiser moments,
//!   assignment tables, step counters) in the same file, with
//!   [`Checkpoint::add_params`] and [`Checkpoint::load_params`] handling the parameter part.
//!
//! Writes are atomic: the file is written under a temporary name in the destination directory,
//! flushed to disk and then renamed over the destination, so a crash leaves either the old
//! checkpoint or the new one, never a torn file. Reading never panics on a bad file: every
//! problem is a [`CheckpointError`] naming the file and what to change.
//!
//! ```
//! use std::collections::BTreeMap;
//! use modula_nn::{load_safetensors, save_safetensors, Init, Linear, ParamStore};
//! use modula_cpu::Cpu;
//! use rand::SeedableRng;
//! let cpu = Cpu::with_threads(1);
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let mut params = ParamStore::new();
//! Linear::new(&cpu, &mut params, "fc", 3, 2, Init::Glorot, &mut rng);
//! let path = std::env::temp_dir().join(format!("modula-doc-{}.safetensors", std::process::id()));
//! let meta = BTreeMap::from([("step".to_string(), "100".to_string())]);
//! save_safetensors(&path, &cpu, &params, &meta)?;
//!
//! let mut restored = ParamStore::new();
//! Linear::new(&cpu, &mut restored, "fc", 3, 2, Init::Glorot, &mut rng);
//! let meta_back = load_safetensors(&path, &cpu, &mut restored)?;
//! assert_eq!(meta_back["step"], "100");
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), modula_nn::CheckpointError>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use modula_tensor::{Backend, BackendError};
use safetensors::{Dtype, SafeTensors, View};

use crate::param::ParamStore;

/// Why a checkpoint could not be written, read or loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file could not be read, written, flushed or renamed.
    #[error(
        "checkpoint {}: I/O error: {source}; check that the path exists and that its directory is readable and writable",
        path.display()
    )]
    Io {
        /// The checkpoint's path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file: truncated, overwritten or not a checkpoint.
    #[error(
        "checkpoint {}: not a valid safetensors file ({reason}); it is truncated or corrupt, so restore it from a good copy or re-save it",
        path.display()
    )]
    Corrupt {
        /// The checkpoint's path.
        path: PathBuf,
        /// What the parser rejected.
        reason: String,
    },
    /// A tensor the caller needs is not in the file.
    #[error(
        "checkpoint {}: no tensor named {name:?}; it was saved from a different model (compare the layer names) or is incomplete",
        path.display()
    )]
    MissingTensor {
        /// The checkpoint's path.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has another shape than the caller expects.
    #[error(
        "checkpoint {}: tensor {name:?} has shape {found:?} but {expected:?} is expected; build the model with the configuration (layer sizes) that saved the checkpoint",
        path.display()
    )]
    ShapeMismatch {
        /// The checkpoint's path.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the caller expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has an element type the caller cannot use (or one modula does not read).
    #[error(
        "checkpoint {}: tensor {name:?} has dtype {found} but {expected} is expected; convert it before loading (modula reads F32, U16 and I64)",
        path.display()
    )]
    WrongDtype {
        /// The checkpoint's path.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype(s) the caller accepts.
        expected: &'static str,
        /// The dtype in the file.
        found: String,
    },
    /// A strict load found tensors that the model does not have.
    #[error(
        "checkpoint {}: {} tensor(s) the model does not have: {names:?}; load it into the model that saved it, or load with ExtraTensors::Ignore",
        path.display(),
        names.len()
    )]
    UnexpectedTensors {
        /// The checkpoint's path.
        path: PathBuf,
        /// The unknown tensors, sorted.
        names: Vec<String>,
    },
    /// A tensor name that the safetensors format reserves.
    #[error(
        "checkpoint {}: tensor name {name:?} is reserved by the safetensors format; rename the parameter",
        path.display()
    )]
    ReservedName {
        /// The checkpoint's path.
        path: PathBuf,
        /// The offending name.
        name: String,
    },
    /// Reading the parameters back from the device failed while saving.
    #[error(
        "checkpoint {}: reading the parameters from the device failed: {source}",
        path.display()
    )]
    Backend {
        /// The checkpoint's path.
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
}

/// The elements of a stored tensor.
///
/// Besides F32 (parameters, optimiser moments), U16 and I64 are supported so that integer
/// state such as module-assignment tables or step counters is stored exactly; other dtypes are
/// rejected with [`CheckpointError::WrongDtype`] when reading.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// Unsigned 16-bit integers.
    U16(Vec<u16>),
    /// Signed 64-bit integers.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::U16(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors name of the element type (`"F32"`, `"U16"`, `"I64"`).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "F32",
            TensorData::U16(_) => "U16",
            TensorData::I64(_) => "I64",
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::U16(_) => Dtype::U16,
            TensorData::I64(_) => Dtype::I64,
        }
    }

    /// Little-endian bytes, the safetensors layout.
    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            TensorData::F32(v) => 4 * v.len(),
            TensorData::U16(v) => 2 * v.len(),
            TensorData::I64(v) => 8 * v.len(),
        }
    }
}

/// A named tensor of a [`Checkpoint`]: a shape of any rank and row-major elements.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl StoredTensor {
    /// A tensor of the given shape.
    ///
    /// # Panics
    /// If the number of elements differs from the product of the shape.
    #[track_caller]
    pub fn new(shape: Vec<usize>, data: TensorData) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            data.len(),
            "StoredTensor: shape {shape:?} holds {n} elements, got {}",
            data.len()
        );
        StoredTensor { shape, data }
    }

    /// An F32 tensor.
    ///
    /// # Panics
    /// If the number of elements differs from the product of the shape.
    #[track_caller]
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::new(shape, TensorData::F32(data))
    }

    /// A U16 tensor.
    ///
    /// # Panics
    /// If the number of elements differs from the product of the shape.
    #[track_caller]
    pub fn u16(shape: Vec<usize>, data: Vec<u16>) -> Self {
        Self::new(shape, TensorData::U16(data))
    }

    /// An I64 tensor.
    ///
    /// # Panics
    /// If the number of elements differs from the product of the shape.
    #[track_caller]
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self::new(shape, TensorData::I64(data))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Shape and elements, by value.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }
}

/// Lets the safetensors serializer read a [`StoredTensor`] without an intermediate copy of
/// the whole file's tensors.
impl View for &StoredTensor {
    fn dtype(&self) -> Dtype {
        self.data.dtype()
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.to_le_bytes())
    }

    fn data_len(&self) -> usize {
        self.data.byte_len()
    }
}

/// What a parameter load does with tensors in the file that the [`ParamStore`] lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExtraTensors {
    /// Fail with [`CheckpointError::UnexpectedTensors`]: the file belongs to another model.
    #[default]
    Reject,
    /// Skip them: the file also holds non-parameter state (optimiser moments and the like).
    Ignore,
}

/// The metadata key under which safetensors stores the string metadata; no tensor may use it.
const METADATA_KEY: &str = "__metadata__";

/// An in-memory safetensors file: named tensors plus string metadata.
///
/// Callers that save more than parameters build one with [`Checkpoint::add_params`] and
/// [`Checkpoint::insert`], then [`Checkpoint::write`] it; they read it back with
/// [`Checkpoint::read`], restore the parameters with [`Checkpoint::load_params`]
/// (`ExtraTensors::Ignore`) and fetch the rest with the typed getters.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    tensors: BTreeMap<String, StoredTensor>,
    /// Free-form string metadata (the safetensors `__metadata__` header).
    pub metadata: BTreeMap<String, String>,
    /// Where the checkpoint came from, for error messages.
    origin: PathBuf,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
            origin: PathBuf::from("<in-memory checkpoint>"),
        }
    }
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses a safetensors file.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if the file cannot be read, [`CheckpointError::Corrupt`] if it
    /// is not a valid safetensors file, [`CheckpointError::WrongDtype`] if a tensor is neither
    /// F32, U16 nor I64.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file; `origin` names it in errors.
    ///
    /// # Errors
    /// As [`Checkpoint::read`], without the I/O errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let origin = origin.as_ref().to_path_buf();
        let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt {
            path: origin.clone(),
            reason: e.to_string(),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        let file = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.iter() {
            let raw = view.data();
            // The parser has checked that the byte length matches shape and dtype, so the
            // chunking below is exact.
            let data = match view.dtype() {
                Dtype::F32 => TensorData::F32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                Dtype::U16 => TensorData::U16(
                    raw.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                Dtype::I64 => TensorData::I64(
                    raw.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                ),
                other => {
                    return Err(CheckpointError::WrongDtype {
                        path: origin,
                        name: name.to_string(),
                        expected: "F32, U16 or I64",
                        found: other.to_string(),
                    });
                }
            };
            let shape = view.shape().to_vec();
            if shape.iter().product::<usize>() != data.len() {
                // Unreachable for files the parser accepted; kept so a parser change cannot
                // turn into a panic in StoredTensor::new.
                return Err(CheckpointError::Corrupt {
                    path: origin,
                    reason: format!("tensor {name:?}: data does not match shape {shape:?}"),
                });
            }
            tensors.insert(name.to_string(), StoredTensor { shape, data });
        }
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Checkpoint {
            tensors,
            metadata,
            origin,
        })
    }

    /// The file's bytes in safetensors format.
    ///
    /// # Errors
    /// As [`Checkpoint::write`], without the I/O errors; errors name [`Checkpoint::origin`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        self.serialize_for(&self.origin)
    }

    /// Serializes, naming `path` (the file being written) in errors.
    fn serialize_for(&self, path: &Path) -> Result<Vec<u8>, CheckpointError> {
        if self.tensors.contains_key(METADATA_KEY) {
            return Err(CheckpointError::ReservedName {
                path: path.to_path_buf(),
                name: METADATA_KEY.to_string(),
            });
        }
        let metadata: Option<HashMap<String, String>> = (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        safetensors::serialize(self.tensors.iter(), metadata).map_err(|e| {
            CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("could not serialize: {e}"),
            }
        })
    }

    /// Writes the checkpoint atomically: to a temporary file in the same directory, flushed to
    /// disk (`fsync`), then renamed over `path` (and, on Unix, the directory is synced so the
    /// rename itself survives a crash).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] on any file-system failure (the temporary file is removed);
    /// [`CheckpointError::ReservedName`] if a tensor is named `__metadata__`;
    /// [`CheckpointError::Corrupt`] if the serializer rejects the header (for example one larger
    /// than safetensors' 100 MB limit).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let bytes = self.serialize_for(path)?;
        write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Adds (or replaces) a tensor, returning the previous one of that name.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        tensor: StoredTensor,
    ) -> Option<StoredTensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<StoredTensor> {
        self.tensors.remove(name)
    }

    /// A tensor by name.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// Every tensor, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StoredTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The path the checkpoint was read from (or a placeholder for one built in memory), as
    /// named in errors.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The tensor `name`, checked to exist with `shape` (any shape when `None`).
    fn expect(
        &self,
        name: &str,
        shape: Option<&[usize]>,
    ) -> Result<&StoredTensor, CheckpointError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.origin.clone(),
                name: name.to_string(),
            })?;
        match shape {
            Some(shape) if shape != t.shape.as_slice() => Err(CheckpointError::ShapeMismatch {
                path: self.origin.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            }),
            _ => Ok(t),
        }
    }

    fn wrong_dtype(&self, name: &str, expected: &'static str, t: &StoredTensor) -> CheckpointError {
        CheckpointError::WrongDtype {
            path: self.origin.clone(),
            name: name.to_string(),
            expected,
            found: t.data.dtype_name().to_string(),
        }
    }

    /// The elements of F32 tensor `name`, checked against `shape` unless it is `None`.
    ///
    /// # Errors
    /// [`CheckpointError::MissingTensor`], [`CheckpointError::ShapeMismatch`] or
    /// [`CheckpointError::WrongDtype`].
    pub fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<&[f32], CheckpointError> {
        let t = self.expect(name, shape)?;
        match &t.data {
            TensorData::F32(v) => Ok(v),
            _ => Err(self.wrong_dtype(name, "F32", t)),
        }
    }

    /// The elements of U16 tensor `name`, checked against `shape` unless it is `None`.
    ///
    /// # Errors
    /// As [`Checkpoint::f32`].
    pub fn u16(&self, name: &str, shape: Option<&[usize]>) -> Result<&[u16], CheckpointError> {
        let t = self.expect(name, shape)?;
        match &t.data {
            TensorData::U16(v) => Ok(v),
            _ => Err(self.wrong_dtype(name, "U16", t)),
        }
    }

    /// The elements of I64 tensor `name`, checked against `shape` unless it is `None`.
    ///
    /// # Errors
    /// As [`Checkpoint::f32`].
    pub fn i64(&self, name: &str, shape: Option<&[usize]>) -> Result<&[i64], CheckpointError> {
        let t = self.expect(name, shape)?;
        match &t.data {
            TensorData::I64(v) => Ok(v),
            _ => Err(self.wrong_dtype(name, "I64", t)),
        }
    }

    /// Downloads every parameter of `params` into the checkpoint as an F32 `[rows, cols]`
    /// tensor under its parameter name (replacing tensors of the same name).
    ///
    /// # Errors
    /// [`CheckpointError::Backend`] if a download fails.
    pub fn add_params<B: Backend>(
        &mut self,
        backend: &B,
        params: &ParamStore<B>,
    ) -> Result<(), CheckpointError> {
        for id in params.ids() {
            let t = params.get(id);
            let data = backend
                .download(t)
                .map_err(|source| CheckpointError::Backend {
                    path: self.origin.clone(),
                    source,
                })?;
            let [rows, cols] = backend.shape(t);
            self.insert(params.name(id), StoredTensor::f32(vec![rows, cols], data));
        }
        Ok(())
    }

    /// Fills every parameter of `params` from the F32 tensor of the same name, which must have
    /// the parameter's shape `[rows, cols]`. Everything is checked before anything is
    /// uploaded, so on error `params` is unchanged.
    ///
    /// # Errors
    /// [`CheckpointError::MissingTensor`], [`CheckpointError::ShapeMismatch`],
    /// [`CheckpointError::WrongDtype`] for the first parameter (in registration order) that
    /// does not fit; [`CheckpointError::UnexpectedTensors`] if `extra` is
    /// [`ExtraTensors::Reject`] and the checkpoint holds tensors the store lacks.
    pub fn load_params<B: Backend>(
        &self,
        backend: &B,
        params: &mut ParamStore<B>,
        extra: ExtraTensors,
    ) -> Result<(), CheckpointError> {
        let mut values = Vec::with_capacity(params.len());
        for id in params.ids() {
            let shape = backend.shape(params.get(id));
            values.push((id, shape, self.f32(params.name(id), Some(&shape))?));
        }
        if extra == ExtraTensors::Reject {
            let unknown: Vec<String> = self
                .tensors
                .keys()
                .filter(|name| params.find(name).is_none())
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(CheckpointError::UnexpectedTensors {
                    path: self.origin.clone(),
                    names: unknown,
                });
            }
        }
        for (id, shape, data) in values {
            *params.get_mut(id) = backend.upload(shape, data);
        }
        Ok(())
    }
}

/// Saves every parameter of `params` (F32, shape `[rows, cols]`, keyed by parameter name) and
/// `metadata` to `path`, atomically (see [`Checkpoint::write`]).
///
/// # Errors
/// [`CheckpointError::Backend`] if a download fails, [`CheckpointError::Io`] if the file cannot
/// be written, [`CheckpointError::ReservedName`] for a parameter named `__metadata__`.
pub fn save_safetensors<B: Backend>(
    path: impl AsRef<Path>,
    backend: &B,
    params: &ParamStore<B>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut ckpt = Checkpoint {
        origin: path.to_path_buf(),
        metadata: metadata.clone(),
        ..Checkpoint::default()
    };
    ckpt.add_params(backend, params)?;
    ckpt.write(path)
}

/// Fills every parameter of `params` from the checkpoint at `path`, strictly: every parameter
/// must be present as an F32 tensor of its shape, and the file must hold nothing else (use
/// [`Checkpoint::read`] and [`Checkpoint::load_params`] with [`ExtraTensors::Ignore`] for files
/// with extra state). Returns the file's metadata. On error `params` is unchanged.
///
/// # Errors
/// Those of [`Checkpoint::read`] and [`Checkpoint::load_params`].
pub fn load_safetensors<B: Backend>(
    path: impl AsRef<Path>,
    backend: &B,
    params: &mut ParamStore<B>,
) -> Result<BTreeMap<String, String>, CheckpointError> {
    let ckpt = Checkpoint::read(path)?;
    ckpt.load_params(backend, params, ExtraTensors::Reject)?;
    Ok(ckpt.metadata)
}

/// Distinguishes temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary sibling of `path`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        )
    })?;
    // The temporary file must be in the same directory: rename is atomic only within one
    // file system.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the rename may already have consumed the file.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened).
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
