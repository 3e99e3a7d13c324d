//! The error of a run command: a bad configuration or run directory, unreadable data or
//! checkpoint, a diverged loss or a failed write, as a message that names the file or field
//! and says what to change; and the two failures a caller handles apart from the others: a run
//! directory in use by another process, and a closed standard output or error.

use std::path::PathBuf;

/// Why a run command failed. The `modula` binary prints it and exits with status 1, except
/// for [`RunError::OutputClosed`], which ends it quietly (see `docs/cli.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Any other failure, as a message naming the file or field and what to change.
    #[error("{0}")]
    Message(String),
    /// A configuration that cannot be read, parsed or validated, as a message naming the file
    /// or field and what to change. Kept apart so that callers other than the command line
    /// (the Python bindings) can report it as a configuration error.
    #[error("{0}")]
    Config(String),
    /// A data set that cannot be loaded (missing, truncated or malformed files), as the data
    /// loader's message.
    #[error("{0}")]
    Data(String),
    /// The caller's interruption check asked the run to stop (a Ctrl-C in the Python
    /// bindings); the checkpoint at `step` was written first, so `--resume` continues it.
    #[error(
        "interrupted at {unit} {step}; the checkpoint is saved, continue the run with `modula train --resume {}`",
        .dir.display()
    )]
    Interrupted {
        /// The run directory.
        dir: PathBuf,
        /// The iteration the checkpoint holds.
        step: u64,
        /// What an iteration is called (`step`, `window`).
        unit: &'static str,
    },
    /// Another process holds the run directory's lock.
    #[error(
        "{} is in use by another modula process{}; wait for it to finish (or stop it) and try again, or choose another directory",
        .dir.display(),
        .pid.map_or(String::new(), |p| format!(" (PID {p})"))
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, when it had written it.
        pid: Option<u32>,
    },
    /// Standard output or standard error could not be written (a closed pipe or descriptor).
    #[error("{stream} is closed")]
    OutputClosed {
        /// `"standard output"` or `"standard error"`.
        stream: &'static str,
    },
}

/// Shorthand for a run error built from anything printable.
pub fn run_error(message: impl Into<String>) -> RunError {
    RunError::Message(message.into())
}

/// Shorthand for a configuration error built from anything printable.
pub fn config_error(message: impl Into<String>) -> RunError {
    RunError::Config(message.into())
}
