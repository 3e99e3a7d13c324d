//! `cargo xtask bench dist`: the expert-parallel modular layer's step at 1, 2 and 4 MPI ranks
//! (modula-dist's `dist_step` example under `mpirun`), into `target/bench/dist.json`: one entry
//! per (configuration, ranks) with `ranks`, `compute_s`, `exchange_s` and `bytes`.
//!
//! Needs the `mpi` feature's system packages (`libopenmpi-dev`, `openmpi-bin`,
//! `libclang-dev`; see `.ci/run`). Rank counts above the machine's cores oversubscribe them:
//! those entries say so (`oversubscribed`) and their timings only show that the job runs.

use std::process::Command;

use serde_json::{Map, Value, json};

use crate::bench::{machine, machine_line, print_table};
use crate::{cargo, target_dir, workspace_root};

/// The rank counts the issue asks for.
const RANKS: [usize; 3] = [1, 2, 4];

/// Builds the example in release, runs it at each rank count and writes the figures.
///
/// # Errors
/// A failing build or MPI job, output that is not the example's JSON, or a file that cannot
/// be written.
pub fn run() -> Result<(), String> {
    let build = [
        "build",
        "--release",
        "-p",
        "modula-dist",
        "--features",
        "mpi",
        "--example",
        "dist_step",
    ];
    // `--manifest-path` rather than a working directory: the timed run may be started from
    // outside the worktree (so that /tmp/quiet.sh, which pauses every process working in a
    // helper worktree, leaves this one running).
    let status = Command::new(cargo())
        .args(build)
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo {}` failed ({status}); it needs libopenmpi-dev and libclang-dev (see .ci/run)",
            build.join(" ")
        ));
    }
    let exe = target_dir().join("release/examples/dist_step");
    let machine = machine();
    let cores = machine["nproc"].as_u64().unwrap_or(1) as usize;
    let mut entries = Vec::new();
    for ranks in RANKS {
        let out = Command::new("mpirun")
            .args(["--oversubscribe", "--allow-run-as-root", "-np"])
            .arg(ranks.to_string())
            .arg(&exe)
            .output()
            .map_err(|e| format!("could not start mpirun (install openmpi-bin): {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "mpirun -np {ranks} {} failed ({}):\n{stdout}{}",
                exe.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for line in stdout.lines().filter(|l| l.starts_with('{')) {
            let mut entry: Map<String, Value> = serde_json::from_str(line)
                .map_err(|e| format!("dist_step printed `{line}`, not a JSON object: {e}"))?;
            entry.insert("oversubscribed".into(), json!(ranks > cores));
            entries.push(entry);
        }
    }
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let path = out_dir.join("dist.json");
    let object = json!({
        "bench": "dist",
        "machine": machine,
        "note": "compute_s and exchange_s are the slowest rank's medians over the step's reps; \
                 exchange_s is time inside collectives, waiting for slower ranks included; \
                 bytes is what all ranks sent to other ranks in one step (forward and backward); \
                 oversubscribed entries ran more ranks than cores and their timings are \
                 correctness-only",
        "entries": entries,
    });
    let text = serde_json::to_string_pretty(&object).expect("JSON values always serialise");
    std::fs::write(&path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "\ndist: {} (figures: {})",
        machine_line(&object["machine"]),
        path.display()
    );
    let columns = [
        "n",
        "m",
        "k",
        "ranks",
        "compute_s",
        "exchange_s",
        "bytes",
        "oversubscribed",
    ];
    print_table(&columns, &entries);
    Ok(())
}
