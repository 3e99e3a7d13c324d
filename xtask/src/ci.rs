//! `cargo xtask ci`: the project's whole test command.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{cargo, workspace_root};

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
        println!("==> xtask ci: {} ({command_line})", step.name);
        let start = Instant::now();
        let status = Command::new(cargo())
            .args(step.args)
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("could not start `{command_line}`: {e}"))?;
        let elapsed = start.elapsed();
        println!("<== xtask ci: {} took {}", step.name, seconds(elapsed));
        timings.push((step.name, elapsed));
        if !status.success() {
            return Err(format!(
                "step `{}` failed ({status}); reproduce it with `{command_line}`, fix it, and re-run `cargo xtask ci`",
                step.name
            ));
        }
    }
    println!("xtask ci: all steps passed in {}", seconds(total.elapsed()));
    for (name, elapsed) in timings {
        println!("  {name:<8} {}", seconds(elapsed));
    }
    Ok(())
}

/// A duration as seconds with one decimal, e.g. `12.3 s`.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
