//! `cargo xtask data NAME [ARGS...]`: fetches a data set with `modula data fetch`.
//!
//! The xtask stays free of modula crates (it must compile in seconds), so it runs the
//! modula-cli binary, whose fetch code is the modula-data library's, rather than linking it.

use std::process::Command;

use crate::{cargo, workspace_root};

/// Runs `cargo run --release -p modula-cli -- data fetch ARGS` from the workspace root.
///
/// # Errors
/// No data set name, cargo failing to start, or a failed fetch (whose own message is already
/// on stderr).
pub fn run(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return Err("name a data set: ptb, fashion-mnist, mnist-10k or cifar-10".into());
    }
    let status = Command::new(cargo())
        .args(["run", "--quiet", "--release", "-p", "modula-cli", "--"])
        .args(["data", "fetch"])
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`modula data fetch {}` failed ({status})",
            args.join(" ")
        ))
    }
}
