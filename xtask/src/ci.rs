//! `cargo xtask ci`: the project's whole test command: the Rust checks and tests, then the
//! Python package's wheel and its pytest suite.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{cargo, python, workspace_root};

/// One step of the CI run: a name for the log and the cargo arguments.
struct Step {
    name: &'static str,
    args: &'static [&'static str],
}

/// The steps, cheapest first, so that a formatting slip fails in a second rather than after
/// the whole test suite has compiled.
const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
    },
    Step {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    // Plain `cargo test` runs unit, integration and doc tests and compiles the examples;
    // `--all-targets` would skip doc tests. The bench targets are compiled (not run) by clippy
    // above, which is all a CI needs to know about them.
    Step {
        name: "test",
        args: &["test", "--workspace"],
    },
    // The MPI feature of the distributed crate and of the binary is off in the workspace
    // build (a plain build needs no MPI library); CI lints both with it and runs their
    // distributed tests, which start `mpirun` with 2 and 4 ranks (the binary's: only
    // `tests/dist.rs`, the rest of its suite ran above).
    Step {
        name: "mpi-clippy",
        args: &[
            "clippy",
            "-p",
            "modula-dist",
            "-p",
            "modula-cli",
            "--features",
            "modula-dist/mpi,modula-cli/mpi",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        name: "mpi-test",
        args: &["test", "-p", "modula-dist", "--features", "mpi"],
    },
    Step {
        name: "mpi-cli-test",
        args: &[
            "test",
            "-p",
            "modula-cli",
            "--features",
            "mpi",
            "--test",
            "dist",
        ],
    },
];

/// Runs every step in order and stops at the first failure.
///
/// # Errors
/// Names the step that failed and the command to reproduce it.
pub fn run() -> Result<(), String> {
    let total = Instant::now();
    let mut timings = Vec::new();
    for step in STEPS {
        let command_line = format!("cargo {}", step.args.join(" "));
        timed(step.name, &command_line, &mut timings, || {
            let status = Command::new(cargo())
                .args(step.args)
                .current_dir(workspace_root())
                .status()
                .map_err(|e| format!("could not start `{command_line}`: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "step `{}` failed ({status}); reproduce it with `{command_line}`, fix it, and re-run `cargo xtask ci`",
                    step.name
                ))
            }
        })?;
    }
    // After the Rust tests, which built the debug `modula` binary the suite compares with.
    let wheel = timed("wheel", "cargo xtask wheel", &mut timings, python::wheel)?;
    timed(
        "pytest",
        "pytest crates/modula-py/tests",
        &mut timings,
        || python::test(&wheel),
    )?;
    println!("xtask ci: all steps passed in {}", seconds(total.elapsed()));
    for (name, elapsed) in timings {
        println!("  {name:<10} {}", seconds(elapsed));
    }
    Ok(())
}

/// Runs one step between its log lines and records how long it took.
fn timed<T>(
    name: &'static str,
    command_line: &str,
    timings: &mut Vec<(&'static str, Duration)>,
    step: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    println!("==> xtask ci: {name} ({command_line})");
    let start = Instant::now();
    let result = step();
    let elapsed = start.elapsed();
    println!("<== xtask ci: {name} took {}", seconds(elapsed));
    timings.push((name, elapsed));
    result
}

/// A duration as seconds with one decimal, e.g. `12.3 s`.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
