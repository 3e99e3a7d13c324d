//! External BLAS peers (Intel MKL, numpy/OpenBLAS) timed in the same run as modula, and the
//! paired rounds that compare them.
//!
//! A peer is a Python process running `benches/python/gemm_peer.py` with its BLAS thread count
//! fixed, which times one product or dense layer step per request. The interpreter is
//! `$MODULA_BENCH_PYTHON` when set (for example a virtual environment with the PyPI `mkl` wheel
//! or torch: `MODULA_BENCH_PYTHON=/path/to/venv/bin/python cargo xtask bench gemm`), else
//! `python3`. A peer that cannot start (no numpy, neither MKL nor torch) is skipped with a
//! message, so the benches run without any of them; `MODULA_BENCH_PEERS=off` skips them all.
//!
//! Timings on a shared machine drift by more than the gaps they measure, so each comparison is
//! made in rounds: every subject (modula and each peer) is timed once per round, the order
//! rotating from round to round, and the figures are medians over rounds of per-round times
//! and per-round ratios ([`paired_rounds`](crate::peer::paired_rounds)).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The variable naming the Python interpreter that runs the peers.
pub const PYTHON_VAR: &str = "MODULA_BENCH_PYTHON";
/// The variable that turns the peers off (`off`).
pub const PEERS_VAR: &str = "MODULA_BENCH_PEERS";
/// The peers, strongest first: Intel MKL, then numpy with the OpenBLAS of its wheel.
pub const PEERS: [&str; 2] = ["mkl", "numpy"];

/// After a peer's round its BLAS threads keep spinning for a while (Intel OpenMP's default
/// block time is 200 ms, OpenBLAS's about 0.1 s), which would steal a core from the next
/// subject; [`paired_rounds`] therefore pauses this long before every subject's round, peers
/// and modula alike, so that each starts from the same idle machine.
pub const SETTLE: Duration = Duration::from_millis(250);

/// A running peer process.
pub struct Peer {
    /// `mkl` or `numpy`.
    pub name: &'static str,
    /// What the peer reported about itself: the library and version it calls, its threads.
    pub about: Value,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts peer `name` with its BLAS limited to `threads` threads, or says why it cannot.
    pub fn start(name: &'static str, threads: usize) -> Result<Peer, String> {
        let python = std::env::var(PYTHON_VAR).unwrap_or_else(|_| "python3".to_owned());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/gemm_peer.py");
        let mut command = Command::new(&python);
        command
            .arg(script)
            .arg(name)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // Every BLAS a peer might use reads one of these.
        for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            command.env(var, threads.to_string());
        }
        // Tuning overrides in the parent environment would make OpenBLAS pick a kernel or
        // blocking that does not match this CPU; the peer uses its own detection instead.
        command
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE");
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout was piped"));
        let mut peer = Peer {
            name,
            about: Value::Null,
            child,
            stdin,
            stdout,
        };
        let about = peer.read_line()?;
        if let Some(why) = about.get("error") {
            return Err(format!(
                "{python}: {}",
                why.as_str().unwrap_or("unknown error")
            ));
        }
        peer.about = about;
        Ok(peer)
    }

    /// Every peer of [`PEERS`] that starts with `threads` threads (none when
    /// `$MODULA_BENCH_PEERS` is `off`); the others are reported on stderr.
    pub fn start_all(threads: usize) -> Vec<Peer> {
        if std::env::var(PEERS_VAR).is_ok_and(|v| v == "off") {
            return Vec::new();
        }
        PEERS
            .iter()
            .filter_map(|&name| match Peer::start(name, threads) {
                Ok(peer) => Some(peer),
                Err(why) => {
                    eprintln!("bench: peer `{name}` skipped: {why}");
                    None
                }
            })
            .collect()
    }

    /// Mean seconds per call of `op` (`nn`, `tn`, `nt` or `step`, see `gemm_peer.py`) on
    /// `rows x k x n`, over a round of at least `min`.
    ///
    /// # Panics
    /// If the peer process fails mid-run (a peer that started is expected to keep working).
    pub fn time(&mut self, op: &str, rows: usize, k: usize, n: usize, min: Duration) -> f64 {
        let request = json!({"op": op, "rows": rows, "k": k, "n": n, "seconds": min.as_secs_f64()});
        let answer = writeln!(self.stdin, "{request}")
            .map_err(|e| e.to_string())
            .and_then(|()| self.read_line());
        answer
            .ok()
            .and_then(|a| a["seconds"].as_f64())
            .unwrap_or_else(|| panic!("peer `{}` failed on {request}", self.name))
    }

    fn read_line(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("peer `{}`: {e}", self.name))?;
        serde_json::from_str(&line)
            .map_err(|e| format!("peer `{}` wrote `{}`: {e}", self.name, line.trim()))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing stdin ends the peer's request loop; wait so that no process outlives the
        // bench.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds per call of `step` over a round of at least `min` (calls batched in doubling
/// counts, so that timer resolution stays small against the round).
pub fn time_round(min: Duration, step: &mut dyn FnMut()) -> f64 {
    let (mut calls, mut batch) = (0usize, 1usize);
    let start = Instant::now();
    while start.elapsed() < min {
        for _ in 0..batch {
            step();
        }
        calls += batch;
        batch *= 2;
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// One subject of [`paired_rounds`]: a function timing one round of at least the given
/// duration, in seconds per call.
pub type Subject<'a> = Box<dyn FnMut(Duration) -> f64 + 'a>;

/// Times every subject once per round for `rounds` rounds of at least `min` each, the order
/// rotating by one subject per round so that none always inherits another's cache state.
/// Every timed round starts the same way, whoever it times: a pause of `settle` (the peers'
/// threads go idle, see [`SETTLE`]), then an untimed warm-up of `min / 4` of the same subject
/// (a training loop calls its products back to back, so warm is what it sees). Without the
/// warm-up, whichever subject followed a pause paid the machine's wake-up: on the 2-vCPU
/// Xeon VM, 512- and 4096-row products ran 10-25% slower in 30 ms rounds after 250 ms idle
/// than back to back, and with the pause only after peers' rounds that subject was always
/// modula. Returns the per-round seconds, one vector per subject in the order given.
pub fn paired_rounds(
    subjects: &mut [Subject<'_>],
    rounds: usize,
    min: Duration,
    settle: Duration,
) -> Vec<Vec<f64>> {
    let count = subjects.len();
    let mut seconds = vec![Vec::with_capacity(rounds); count];
    for round in 0..rounds {
        for turn in 0..count {
            let s = (round + turn) % count;
            std::thread::sleep(settle);
            subjects[s](min / 4);
            seconds[s].push(subjects[s](min));
        }
    }
    // The last subject may be a peer whose threads still spin: whatever runs next starts
    // after the same pause.
    std::thread::sleep(settle);
    seconds
}

/// The median of `values` (the mean of the middle two for an even count).
///
/// # Panics
/// If `values` is empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The median over rounds of `of[r] / per[r]`: how many times faster the subject timed in
/// `per` was than the one in `of`, round by round.
pub fn median_ratio(of: &[f64], per: &[f64]) -> f64 {
    let ratios: Vec<f64> = of.iter().zip(per).map(|(a, b)| a / b).collect();
    median(&ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_ratio(&[2.0, 4.0, 9.0], &[1.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn rounds_rotate_and_time_every_subject() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut subjects: Vec<Subject<'_>> = (0..3)
            .map(|i| {
                let order = &order;
                Box::new(move |_| {
                    order.borrow_mut().push(i);
                    i as f64
                }) as Subject<'_>
            })
            .collect();
        let seconds = paired_rounds(&mut subjects, 2, Duration::ZERO, Duration::ZERO);
        assert_eq!(seconds, [vec![0.0, 0.0], vec![1.0, 1.0], vec![2.0, 2.0]]);
        // Rounds starting at subject 0 and at subject 1, each timing preceded by a warm-up
        // of the same subject.
        assert_eq!(*order.borrow(), [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0]);
    }
}
