//! Starting this test binary as an MPI job: the launcher tests of each test file run one of
//! its ignored worker tests on every rank of `mpirun -np P`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A job that has not finished by then has hung (the checks take seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs this test binary's ignored test `test` on every rank of `mpirun -np ranks`, with the
/// environment variables `env` set on every rank; returns whether the job succeeded, its
/// output, and how long it ran. A job still running after [`DEADLINE`] is killed and counts as
/// failed.
pub fn run_job(ranks: usize, test: &str, env: &[(&str, &str)]) -> (bool, String, Duration) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root", "-np"])
        .arg(ranks.to_string());
    for (key, value) in env {
        // OpenMPI's `-x` exports a variable to every rank, also when they run elsewhere.
        cmd.env(key, value).args(["-x", key]);
    }
    let mut child = cmd
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            test,
            "--test-threads=1",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "could not start mpirun; install openmpi-bin (see .ci/run), or test without the \
             mpi feature",
        );
    let start = Instant::now();
    while child.try_wait().expect("waiting for mpirun").is_none() {
        if start.elapsed() > DEADLINE {
            // The id is our own child's; nothing else is touched.
            child.kill().expect("killing a hung mpirun");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("mpirun output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log, start.elapsed())
}

/// Runs `test` under `mpirun -np ranks` (with `env`) and fails with the job's output unless
/// every rank printed `worker passed on rank`.
pub fn launch(ranks: usize, test: &str, env: &[(&str, &str)]) {
    let (ok, log, took) = run_job(ranks, test, env);
    assert!(
        ok && log.matches("worker passed on rank").count() == ranks,
        "mpirun -np {ranks} {test} failed after {took:?}:\n{log}"
    );
}
