//! Reading a checkpoint's metadata back, with errors that name the checkpoint.

use modula_nn::Checkpoint;

use crate::config::Algo;
use crate::error::TrainError;

/// Reads a checkpoint's metadata back, with errors that name the checkpoint.
#[derive(Debug)]
pub struct MetaReader<'c> {
    ck: &'c Checkpoint,
    path: String,
}

impl<'c> MetaReader<'c> {
    /// A reader for `ck`, refusing a checkpoint written by another algorithm than `algo`.
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when the algorithm differs or is not recorded.
    pub fn new(ck: &'c Checkpoint, algo: Algo) -> Result<Self, TrainError> {
        let reader = MetaReader {
            ck,
            path: ck.origin().display().to_string(),
        };
        let written = reader.get("algo")?;
        if written != algo.name() {
            return Err(reader.mismatch(format!(
                "it was written by `{written}`, this run uses `{}`",
                algo.name()
            )));
        }
        Ok(reader)
    }

    /// The checkpoint being read.
    pub fn checkpoint(&self) -> &'c Checkpoint {
        self.ck
    }

    /// A [`TrainError::Mismatch`] naming the checkpoint.
    pub fn mismatch(&self, problem: String) -> TrainError {
        TrainError::Mismatch {
            path: self.path.clone(),
            problem,
        }
    }

    /// The metadata value under `key`.
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when it is missing.
    pub fn get(&self, key: &str) -> Result<String, TrainError> {
        self.ck
            .metadata
            .get(key)
            .cloned()
            .ok_or_else(|| self.mismatch(format!("metadata `{key}` is missing")))
    }

    /// The unsigned integer stored under `key`.
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when it is missing or not a number.
    pub fn number(&self, key: &str) -> Result<u64, TrainError> {
        self.get(key)?
            .parse()
            .map_err(|_| self.mismatch(format!("metadata `{key}` is not a number")))
    }
}
