//! The optional numpy/OpenBLAS baseline for the GEMM figures.
//!
//! numpy runs in a child process with its BLAS thread count pinned, so the comparison is
//! thread-for-thread with our `Cpu::with_threads(t)` figures.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Prints numpy's version and the BLAS it was built against.
const PROBE: &str = r#"
import json, numpy
try:
    blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = "%s %s" % (blas.get("name", "?"), blas.get("version", "?"))
except Exception:
    blas = "unknown"
print(json.dumps({"version": numpy.__version__, "blas": blas}))
"#;

/// Times `numpy.matmul` for each `[m, k, n]` in `argv[1]` and prints seconds per call.
///
/// Each shape gets a short warm-up (thread start-up, page faults) and is then timed in five
/// rounds of about 0.2 s; the median round's mean is reported. OpenBLAS threads spin while they
/// wait, so a single round that overlaps other work on a 2-core machine can be ten times slower;
/// the median keeps such a spike out of the figure without needing more measurement time.
const TIME_MATMUL: &str = r#"
import json, sys, time
import numpy as np
rng = np.random.default_rng(0)
out = []
for m, k, n in json.loads(sys.argv[1]):
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    c = np.empty((m, n), dtype=np.float32)
    for _ in range(3):
        np.matmul(a, b, out=c)
    rounds = []
    for _ in range(5):
        iters, elapsed, batch = 0, 0.0, 1
        while elapsed < 0.2:
            t0 = time.perf_counter()
            for _ in range(batch):
                np.matmul(a, b, out=c)
            elapsed += time.perf_counter() - t0
            iters += batch
            batch *= 2
        rounds.append(elapsed / iters)
    out.append(sorted(rounds)[len(rounds) // 2])
print(json.dumps(out))
"#;

/// numpy's version and BLAS, or why numpy cannot be used.
pub fn probe() -> Result<Value, String> {
    let out = python(PROBE, &[], None)
        .map_err(|why| format!("python3 with numpy is not available ({why})"))?;
    serde_json::from_str(&out).map_err(|e| format!("unexpected numpy probe output `{out}`: {e}"))
}

/// Mean seconds per `numpy.matmul` for each shape, with BLAS limited to `threads` threads.
pub fn time_matmul(shapes: &[[usize; 3]], threads: usize) -> Result<Vec<f64>, String> {
    let out = python(TIME_MATMUL, &[json!(shapes).to_string()], Some(threads))?;
    let seconds: Vec<f64> = serde_json::from_str(&out)
        .map_err(|e| format!("unexpected numpy timing output `{out}`: {e}"))?;
    if seconds.len() != shapes.len() {
        return Err(format!(
            "numpy timed {} shapes, expected {}",
            seconds.len(),
            shapes.len()
        ));
    }
    Ok(seconds)
}

/// Runs a Python snippet and returns its trimmed stdout.
fn python(code: &str, args: &[String], threads: Option<usize>) -> Result<String, String> {
    let mut command = Command::new("python3");
    command.arg("-c").arg(code).args(args).stdin(Stdio::null());
    if let Some(t) = threads {
        let t = t.to_string();
        // Every BLAS numpy might be linked against reads one of these.
        for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            command.env(var, &t);
        }
        // Tuning overrides in the parent environment would make OpenBLAS pick a kernel or
        // blocking that does not match this CPU; the child uses its own detection instead.
        command
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE");
    }
    let out = command
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        return Err(format!("python3 failed ({}): {last}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
