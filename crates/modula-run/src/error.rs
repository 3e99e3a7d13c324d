//! The error of a run command: a bad configuration or run directory, unreadable data or
//! checkpoint, a diverged loss or a failed write, as a message that names the file or field
//! and says what to change.

use std::fmt;

/// Why a run command failed. The `modula` binary prints it and exits with status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError(pub String);

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Shorthand for a run error built from anything printable.
pub fn run_error(message: impl Into<String>) -> RunError {
    RunError(message.into())
}
