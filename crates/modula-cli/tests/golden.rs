//! Golden files: the metrics and summaries of fixed-seed runs, recorded from the commit before
//! the training stack was restructured (issue 15), which must not change a single result; the
//! toy runs were recorded again when the E-step began to draw each example's candidates from
//! its own stream (issue 23: the draws, and so every EM result, changed on purpose), and again
//! when it began to score one candidate at a time, each from streams of its own. The
//! test reruns the same configurations and compares every field of every `metrics.jsonl`
//! record and of `summary.json` bit for bit, except the wall-clock ones. The toy runs are the
//! default configuration for seeds 0, 1 and 2; the Penn Treebank runs are 50 windows of
//! `tests/golden/ptb-golden.toml` for each algorithm and need `modula data fetch ptb` (without
//! the data they are skipped, except under `CI=true`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{assert_ok, modula_env, ptb_data_dir};

/// Fields that measure the machine, not the computation.
const WALL_CLOCK: [&str; 4] = ["examples_per_s", "tokens_per_s", "seconds", "train_seconds"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn records(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that `got` holds every field of `want` (wall-clock ones aside) with the same value;
/// numbers compare as the `f64` they were written from.
fn assert_same_fields(want: &Value, got: &Value, what: &str) {
    let (Value::Object(want), Value::Object(got)) = (want, got) else {
        panic!("{what}: not a JSON object");
    };
    for (key, value) in want {
        if WALL_CLOCK.contains(&key.as_str()) {
            continue;
        }
        assert_eq!(got.get(key), Some(value), "{what}: field `{key}` differs");
    }
}

/// Runs `modula train ARGS --out DIR` and compares its files with the golden run `name`.
fn check(name: &str, args: &[&str], env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", out.to_str().unwrap()]);
    assert_ok(&modula_env(&all, tmp.path(), env));
    let golden = golden_dir().join(name);
    let (want, got) = (
        records(&golden.join("metrics.jsonl")),
        records(&out.join("metrics.jsonl")),
    );
    assert_eq!(got.len(), want.len(), "{name}: number of metrics records");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_same_fields(w, g, &format!("{name} metrics.jsonl line {}", i + 1));
    }
    let summary = |dir: &Path| -> Value {
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    assert_same_fields(
        &summary(&golden),
        &summary(&out),
        &format!("{name} summary.json"),
    );
}

#[test]
fn toy_runs_match_their_golden_files() {
    for seed in ["0", "1", "2"] {
        check(
            &format!("toy-{seed}"),
            &["--seed", seed, "--threads", "2"],
            &[],
        );
    }
}

#[test]
fn ptb_runs_match_their_golden_files() {
    let Some(data) = ptb_data_dir() else { return };
    let config = golden_dir().join("ptb-golden.toml");
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    for algo in ["em", "reinforce", "topk", "dense"] {
        check(
            &format!("ptb-{algo}"),
            &["--config", config.to_str().unwrap(), "--algo", algo],
            &env,
        );
    }
}
