//! Writing to standard output and standard error without panicking: `println!` panics when
//! the stream is closed (a reader that went away, a closed descriptor), and a panic exits with
//! status 101. These functions return [`RunError::OutputClosed`] instead, which the `modula`
//! binary turns into a quiet exit with its documented status.

use std::io::Write;

use crate::error::RunError;

/// Writes `text` to standard output.
///
/// # Errors
/// [`RunError::OutputClosed`] when standard output cannot be written.
pub fn print(text: &str) -> Result<(), RunError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|_| RunError::OutputClosed {
            stream: "standard output",
        })
}

/// Writes `text` to standard error.
///
/// # Errors
/// [`RunError::OutputClosed`] when standard error cannot be written.
pub fn eprint(text: &str) -> Result<(), RunError> {
    std::io::stderr()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|_| RunError::OutputClosed {
            stream: "standard error",
        })
}
