//! Errors as Python exceptions: every failure a user can cause becomes one of the classes of
//! `modula.errors` (defined in Python, so that they can subclass `ValueError` or `TypeError`
//! too), and a Rust panic is caught before it reaches the interpreter and raised as
//! `modula.InternalError`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use modula_run::RunError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Which exception class of `modula.errors` an error is raised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A configuration or constructor argument out of range (`ConfigError`, a `ValueError`).
    Config,
    /// A data set that cannot be loaded (`DataError`).
    Data,
    /// A run directory that cannot be used, or a failed write (`RunError`).
    Run,
    /// An array of the wrong shape or layout, or indices out of range (`ArrayError`, a
    /// `ValueError`).
    Array,
    /// An argument that is not a numpy array of the expected dtype (`DTypeError`, a
    /// `TypeError` and an `ArrayError`).
    DType,
    /// A loss that is no longer finite (`DivergedError`).
    Diverged,
    /// A bug in modula: a panic or a broken internal invariant (`InternalError`).
    Internal,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Config => "ConfigError",
            Kind::Data => "DataError",
            Kind::Run => "RunError",
            Kind::Array => "ArrayError",
            Kind::DType => "DTypeError",
            Kind::Diverged => "DivergedError",
            Kind::Internal => "InternalError",
        }
    }
}

/// An error on its way to Python. It holds no Python object, so it can be built while the GIL
/// is released and converted once it is held again.
#[derive(Debug)]
pub struct Error {
    /// The exception class.
    pub kind: Kind,
    /// The message: what is wrong and what to change.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

/// Results of the bindings' Rust side.
pub type Result<T> = std::result::Result<T, Error>;

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        let kind = match &e {
            RunError::Config(_) => Kind::Config,
            RunError::Data(_) => Kind::Data,
            _ => Kind::Run,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<modula_data::DataError> for Error {
    fn from(e: modula_data::DataError) -> Self {
        Error::new(Kind::Data, e.to_string())
    }
}

impl From<modula_em::ConfigError> for Error {
    fn from(e: modula_em::ConfigError) -> Self {
        Error::new(Kind::Config, e.to_string())
    }
}

impl From<modula_em::TrainError> for Error {
    fn from(e: modula_em::TrainError) -> Self {
        use modula_em::TrainError;
        match e {
            TrainError::Backend(e) => e.into(),
            // The bindings check the loss themselves, so a gradient step does not return these
            // today; a future one that did would still be a divergence.
            TrainError::Diverged { .. } | TrainError::LossExploded { .. } => {
                Error::new(Kind::Diverged, e.to_string())
            }
            // The bindings' steps read no checkpoint and run in one process.
            e => Error::new(Kind::Internal, e.to_string()),
        }
    }
}

impl From<modula_tensor::BackendError> for Error {
    fn from(e: modula_tensor::BackendError) -> Self {
        // The CPU backend reports no device failures; one would be a bug.
        Error::new(Kind::Internal, format!("the CPU backend failed: {e}"))
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        Python::attach(|py| {
            let class = py
                .import("modula.errors")
                .and_then(|m| m.getattr(e.kind.class()));
            match class.and_then(|c| c.call1((e.message.clone(),))) {
                Ok(exception) => PyErr::from_value(exception),
                // Only a broken installation (the Python half of the package missing) gets
                // here; the message still reaches the user.
                Err(_) => PyRuntimeError::new_err(e.message),
            }
        })
    }
}

/// Runs `f`, turning a panic into [`Kind::Internal`]: contract checks in the Rust crates
/// panic on misuse, and the bindings check arguments first so that a panic is a bug, which
/// the user should see as an exception rather than a crash.
pub fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Err(Error::new(
            Kind::Internal,
            format!(
                "modula failed inside Rust: {what}. This is a bug in modula, not in your call: please report it with the call that raised it"
            ),
        ))
    })
}

/// Runs `f` with the GIL released (other Python threads run meanwhile) and panics caught.
pub fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    py.detach(|| guarded(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_that_names_it() {
        for payload in [0, 1] {
            let err = guarded::<()>(|| match payload {
                0 => panic!("broken invariant"),
                _ => panic!("{} invariant", "broken"),
            })
            .unwrap_err();
            assert!(matches!(err.kind, Kind::Internal), "{err:?}");
            assert_eq!(err.kind.class(), "InternalError");
            assert!(err.message.contains("broken invariant"), "{}", err.message);
        }
    }

    #[test]
    fn an_error_returned_without_a_panic_passes_through() {
        let err = guarded::<()>(|| Err(Error::new(Kind::Data, "missing file"))).unwrap_err();
        assert!(matches!(err.kind, Kind::Data));
        assert_eq!(err.message, "missing file");
        assert_eq!(guarded(|| Ok(3)).unwrap(), 3);
    }
}
