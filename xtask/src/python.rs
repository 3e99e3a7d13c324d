//! The Python package: `cargo xtask wheel` builds it (maturin, release profile, in the
//! workspace's own target directory, so that a rebuild after a change recompiles only what
//! changed), and the last steps of `cargo xtask ci` install that wheel into
//! `target/python-test` and run the pytest suite against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{target_dir, workspace_root};

/// The bindings' manifest, relative to the workspace root.
const MANIFEST: &str = "crates/modula-py/Cargo.toml";

/// The pytest suite, relative to the workspace root.
const TESTS: &str = "crates/modula-py/tests";

/// What the Python steps need, and how to get it.
const INSTALL: &str = "python3 -m pip install maturin pytest numpy";

/// Runs `python3 ARGS` from the workspace root, naming `what` in errors.
fn python(args: &[&str], env: &[(&str, &Path)], what: &str) -> Result<(), String> {
    let status = Command::new("python3")
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not start python3 for {what}: {e}; install Python 3"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({status}); reproduce it with `python3 {}`",
            args.join(" ")
        ))
    }
}

/// Checks that `module` imports in python3.
fn require(module: &str) -> Result<(), String> {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import {module}; install the Python tools with `{INSTALL}`"
        ))
    }
}

/// Where `cargo xtask wheel` writes the wheel.
fn wheel_dir() -> PathBuf {
    target_dir().join("wheels")
}

/// Builds the wheel (release profile) into `target/wheels`, replacing older ones, and
/// returns its path.
///
/// # Errors
/// A message when maturin is missing or the build fails.
pub fn wheel() -> Result<PathBuf, String> {
    require("maturin")?;
    let dir = wheel_dir();
    // Only this build's wheel stays, so that installing `target/wheels/*.whl` is unambiguous.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "whl") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
            }
        }
    }
    let out = dir.to_string_lossy().into_owned();
    python(
        &[
            "-m",
            "maturin",
            "build",
            "--release",
            "-m",
            MANIFEST,
            "--out",
            &out,
        ],
        &[],
        "the wheel build",
    )?;
    std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| format!("maturin wrote no wheel into {}", dir.display()))
}

/// Installs `wheel` into `target/python-test` and runs the pytest suite against it, with
/// `MODULA_CLI` naming the debug `modula` binary that `cargo test` built (the suite compares
/// its runs with the command line's).
///
/// # Errors
/// A message when pytest or numpy is missing, the install fails, or a test fails.
pub fn test(wheel: &Path) -> Result<(), String> {
    require("pytest")?;
    require("numpy")?;
    let site = target_dir().join("python-test");
    let wheel = wheel.to_string_lossy().into_owned();
    let target = site.to_string_lossy().into_owned();
    // `--target` installs beside nothing else (no virtual environment needed, and Debian's
    // externally-managed system Python allows it); `--upgrade` replaces the previous build.
    python(
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--upgrade",
            "--target",
            &target,
            &wheel,
        ],
        &[],
        "installing the wheel",
    )?;
    let cli = target_dir().join("debug").join("modula");
    python(
        // No cache directory: the suite leaves nothing in the source tree.
        &["-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS],
        &[("PYTHONPATH", &site), ("MODULA_CLI", &cli)],
        "the pytest suite",
    )
}
