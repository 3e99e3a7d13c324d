//! A run directory survives a crash at any moment: every directory a killed `modula train`
//! leaves is either continued by `--resume` or, when its error says so, reused by a new run
//! with `--out`; and the finished run's `metrics.jsonl` and figures are bit for bit those of
//! an uninterrupted run (wall-clock fields aside). Two ways of crashing: the `MODULA_FAULT`
//! hook, which stops the process at each named write site in turn, and SIGKILL after seeded
//! random delays, the first few within the first milliseconds.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use modula_run::fault::{FAULT_EXIT, FAULT_VAR};
use serde_json::Value;

mod common;
use common::{SMALL, json, modula, modula_env, stderr, toy_metrics as metrics};

/// The fields of `summary.json` that are computed, not timed.
const FIGURES: [&str; 8] = [
    "steps",
    "test_loss",
    "test_nll",
    "purity",
    "effective_modules",
    "controller_perplexity",
    "usage",
    "linear_baseline_mse",
];

/// The uninterrupted run every crashed one must end up equal to, and how long it took (the
/// scale of the random kills' delays).
fn reference(tmp: &Path) -> (Vec<Value>, Value, Duration) {
    let started = Instant::now();
    let out = modula(
        &["train", "--config", "run.toml", "--out", "reference"],
        tmp,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let took = started.elapsed();
    let dir = tmp.join("reference");
    (metrics(&dir), json(&dir.join("summary.json")), took)
}

/// The small run made three times longer, with checkpoints inside logging intervals (every
/// 30 iterations, records every 40), so that crashes land between every kind of write.
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let config = SMALL
        .replace("steps = 200", "steps = 600")
        .replace("checkpoint_every = 100", "checkpoint_every = 30");
    fs::write(tmp.path().join("run.toml"), config).unwrap();
    tmp
}

/// Brings `dir` to a finished run the way a user would: `--resume`; if that refuses, its
/// message must name `modula train --out DIR`, which must then work.
fn recover(tmp: &Path, dir: &str) {
    let resumed = modula(&["train", "--resume", dir], tmp);
    if resumed.status.success() {
        return;
    }
    let message = stderr(&resumed);
    assert_eq!(resumed.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!("`modula train --out {dir}`")),
        "--resume refused {dir} without saying how to go on: {message}"
    );
    let fresh = modula(&["train", "--config", "run.toml", "--out", dir], tmp);
    assert!(
        fresh.status.success(),
        "--out {dir} refused after --resume pointed to it: {}",
        stderr(&fresh)
    );
}

/// Checks a recovered run against the reference: metrics, figures, and nothing left over.
fn assert_like_reference(tmp: &Path, dir: &str, want: &(Vec<Value>, Value, Duration), what: &str) {
    let path = tmp.join(dir);
    assert_eq!(metrics(&path), want.0, "{what}: metrics.jsonl differs");
    let summary = json(&path.join("summary.json"));
    for key in FIGURES {
        assert_eq!(summary[key], want.1[key], "{what}: summary field {key}");
    }
    for entry in fs::read_dir(&path).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "{what}: {name} was left behind");
    }
}

/// Runs `args` with the fault hook armed at `fault`, expecting it to stop there.
fn crash_at(tmp: &Path, args: &[&str], fault: &str) -> Output {
    let out = modula_env(args, tmp, &[(FAULT_VAR, fault)]);
    assert_eq!(
        out.status.code(),
        Some(FAULT_EXIT),
        "{fault} was not reached: {}",
        stderr(&out)
    );
    out
}

#[test]
fn a_crash_at_every_write_site_leaves_a_directory_that_finishes_like_an_uninterrupted_run() {
    let tmp = setup();
    let t = tmp.path();
    let want = reference(t);
    let fresh = ["train", "--config", "run.toml", "--out"];
    // Each site, at its first visit and (where a run visits it more than once) a later one:
    // the first step-0 checkpoint and the one of step 60, the first record and the third.
    let sites = [
        "config:1",
        "config-rename:1",
        "checkpoint:1",
        "checkpoint:3",
        "checkpoint-rename:2",
        "metrics-append:1",
        "metrics-append:3",
        "summary:1",
        "plots:1",
        "plots:4",
    ];
    for site in sites {
        let dir = site.replace(':', "-");
        crash_at(t, &[&fresh[..], &[dir.as_str()]].concat(), site);
        recover(t, &dir);
        assert_like_reference(t, &dir, &want, site);
    }
    // Sites only a resume reaches: the history rewrite (a crash after a record past the last
    // checkpoint makes the resume cut it) and the configuration rewrite (a new bound).
    crash_at(t, &[&fresh[..], &["resumed"]].concat(), "metrics-append:2");
    crash_at(t, &["train", "--resume", "resumed"], "history-rewrite:1");
    crash_at(
        t,
        &["train", "--resume", "resumed", "--steps", "120"],
        "config:1",
    );
    recover(t, "resumed");
    assert_like_reference(t, "resumed", &want, "history-rewrite and config on resume");
}

/// A splitmix64 step: the seeded delays need no generator crate.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Starts `args` and kills it (SIGKILL) after `delay`.
fn kill_after(tmp: &Path, args: &[&str], delay: Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modula"))
        .args(args)
        .current_dir(tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sleep(delay);
    // The run may have finished already, which is one more state to recover from.
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn runs_killed_at_seeded_random_moments_finish_like_an_uninterrupted_run() {
    let tmp = setup();
    let t = tmp.path();
    let want = reference(t);
    let span = want.2.as_micros() as u64;
    for seed in 0..24u64 {
        let mut state = seed;
        // The first six kills fall within the first 5 ms (before or while the directory is
        // created); the rest anywhere in a run's length.
        let within = if seed < 6 { 5_000 } else { span + 1 };
        let delay = Duration::from_micros(splitmix(&mut state) % within);
        let dir = format!("killed-{seed}");
        kill_after(
            t,
            &["train", "--config", "run.toml", "--out", dir.as_str()],
            delay,
        );
        // Every third directory is killed once more while it resumes.
        if seed % 3 == 2 && t.join(&dir).join("checkpoint.safetensors").exists() {
            let again = Duration::from_micros(splitmix(&mut state) % (span + 1));
            kill_after(t, &["train", "--resume", dir.as_str()], again);
        }
        recover(t, &dir);
        assert_like_reference(
            t,
            &dir,
            &want,
            &format!("seed {seed}, killed after {delay:?}"),
        );
    }
}
