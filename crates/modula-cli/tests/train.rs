//! End-to-end tests of `modula train` and `modula eval`: they run the binary on a small toy
//! task in temporary directories and check the run directory, resuming, reproducibility and
//! every error path's exit status and message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{SMALL, assert_fails, assert_ok, json, modula, stderr, toy_metrics as metrics};

/// Writes `SMALL` plus `extra` (TOML appended to the matching sections) as `name`.
fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// Trains into `tmp/out` with the small configuration and the given flags.
fn train(tmp: &Path, out: &str, flags: &[&str]) -> Output {
    let cfg = config(tmp, &format!("{out}.toml"), SMALL);
    let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--out", out];
    args.extend_from_slice(flags);
    modula(&args, tmp)
}

/// The `step` metadata of a safetensors checkpoint (an 8-byte little-endian header length,
/// then the JSON header with `__metadata__`).
fn checkpoint_step(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header["__metadata__"]["step"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The figures `summary.json` and `modula eval --json` share.
const FIGURES: [&str; 6] = [
    "test_loss",
    "test_nll",
    "purity",
    "effective_modules",
    "controller_perplexity",
    "linear_baseline_mse",
];

#[test]
fn a_run_directory_holds_everything_and_eval_reproduces_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(tmp.path(), "run", &["--seed", "1"]);
    assert_ok(&out);
    let dir = tmp.path().join("run");
    for file in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "summary.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    for plot in ["loss", "modules", "usage"] {
        let png = fs::read(dir.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png is not a PNG");
        let svg = fs::read_to_string(dir.join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{plot}.svg");
    }
    // Non-terminal stderr gets one plain line per logging interval.
    assert_eq!(stderr(&out).matches("step ").count(), 5, "{}", stderr(&out));

    // The resolved configuration holds the flags and the defaults.
    let resolved: toml::Table = fs::read_to_string(dir.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resolved["seed"].as_integer(), Some(1));
    assert_eq!(resolved["threads"].as_integer(), Some(2));
    assert_eq!(resolved["train"]["algo"].as_str(), Some("em"));
    assert_eq!(resolved["train"]["lr"].as_float(), Some(0.01));
    assert_eq!(resolved["model"]["modules"].as_integer(), Some(6));

    let lines = metrics(&dir);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [40, 80, 120, 160, 200]);
    for key in [
        "task_nll",
        "ctrl_nll",
        "controller_perplexity",
        "batch_perplexity",
        "usage",
        "changed",
        "test_mse",
        "test_nll",
        "purity",
        "effective_modules",
    ] {
        assert!(!lines[0][key].is_null(), "{key} is missing or null");
    }
    // 36 of each 40 iterations are M-steps over batches of 64 rows.
    let usage: u64 = lines[0]["usage"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(usage, 36 * 64);

    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["task"], "toy");
    assert_eq!(summary["algo"], "em");
    assert_eq!(summary["steps"], 200);
    assert_eq!(summary["seed"], 1);
    assert_eq!(summary["threads"], 2);
    assert_eq!(summary["parameters"], 60);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["test_loss"], lines[4]["test_mse"]);

    let eval = modula(&["eval", "--run", "run", "--json"], tmp.path());
    assert_ok(&eval);
    let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
    for key in FIGURES {
        assert_eq!(eval[key], summary[key], "{key}");
    }
    assert_eq!(eval["steps"], 200);
    let text = modula(&["eval", "--run", "run"], tmp.path());
    assert_ok(&text);
    assert!(String::from_utf8_lossy(&text.stdout).contains("purity"));
}

#[test]
fn identical_seeds_give_identical_runs_and_the_resolved_config_repeats_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    assert_ok(&train(tmp.path(), "a", &["--seed", "3"]));
    assert_ok(&train(tmp.path(), "b", &["--seed", "3"]));
    assert_ok(&train(tmp.path(), "c", &["--seed", "4"]));
    let again = modula(
        &["train", "--config", "a/config.toml", "--out", "again"],
        tmp.path(),
    );
    assert_ok(&again);
    let a = metrics(&tmp.path().join("a"));
    assert_eq!(a, metrics(&tmp.path().join("b")));
    assert_eq!(a, metrics(&tmp.path().join("again")));
    assert_ne!(
        a,
        metrics(&tmp.path().join("c")),
        "the seed changes nothing"
    );
}

#[test]
fn a_resumed_run_logs_exactly_what_the_uninterrupted_run_logs() {
    let tmp = tempfile::tempdir().unwrap();
    // Uninterrupted: 400 steps, a checkpoint halfway.
    assert_ok(&train(
        tmp.path(),
        "full",
        &["--steps", "400", "--seed", "5"],
    ));
    // Interrupted at the halfway checkpoint, then continued to 400.
    assert_ok(&train(
        tmp.path(),
        "half",
        &["--steps", "200", "--seed", "5"],
    ));
    assert_eq!(metrics(&tmp.path().join("half")).len(), 5);
    assert_ok(&modula(
        &["train", "--resume", "half", "--steps", "400"],
        tmp.path(),
    ));
    assert_eq!(
        metrics(&tmp.path().join("full")),
        metrics(&tmp.path().join("half"))
    );
    let (full, half) = (
        json(&tmp.path().join("full/summary.json")),
        json(&tmp.path().join("half/summary.json")),
    );
    for key in FIGURES {
        assert_eq!(full[key], half[key], "{key}");
    }
    assert_eq!(half["steps"], 400);
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_without_duplicate_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    assert_ok(&train(tmp.path(), "reference", &["--steps", "400"]));
    // A long run with checkpoints inside logging intervals, killed once it has logged past
    // a checkpoint.
    let cfg = config(
        tmp.path(),
        "long.toml",
        &SMALL.replace("checkpoint_every = 100", "checkpoint_every = 30"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_modula"))
        .args(["train", "--config", cfg.to_str().unwrap()])
        .args(["--out", "killed", "--steps", "1000000"])
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = tmp.path().join("killed/metrics.jsonl");
    // Waits for the line of step 80: checkpoints at 30 and 60 are then on disk.
    let logged = (0..6000).any(|_| {
        let seen = fs::read_to_string(&log).is_ok_and(|t| t.contains("\"step\":80,"));
        if !seen {
            sleep(Duration::from_millis(5));
        }
        seen
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(logged, "the long run never logged step 80");
    let at = checkpoint_step(&tmp.path().join("killed/checkpoint.safetensors"));
    assert!(
        (60..400).contains(&at),
        "killed with its checkpoint at step {at}"
    );
    let resumed = modula(
        &["train", "--resume", "killed", "--steps", "400"],
        tmp.path(),
    );
    assert_ok(&resumed);
    assert_eq!(
        metrics(&tmp.path().join("reference")),
        metrics(&tmp.path().join("killed"))
    );
}

#[test]
fn every_algorithm_runs_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    for algo in ["reinforce", "topk", "dense"] {
        let out = train(tmp.path(), algo, &["--algo", algo, "--steps", "80"]);
        assert_ok(&out);
        let summary = json(&tmp.path().join(algo).join("summary.json"));
        assert_eq!(summary["algo"], algo);
        assert_eq!(summary["steps"], 80);
    }
    let params = config(
        tmp.path(),
        "params.toml",
        &SMALL.replace(
            "[train]",
            "[train]\nalgo = \"dense\"\ndense_match = \"params\"",
        ),
    );
    let out = modula(
        &[
            "train",
            "--config",
            params.to_str().unwrap(),
            "--out",
            "params",
        ],
        tmp.path(),
    );
    assert_ok(&out);
    let (compute, params) = (
        json(&tmp.path().join("dense/summary.json")),
        json(&tmp.path().join("params/summary.json")),
    );
    assert!(params["parameters"].as_u64() > compute["parameters"].as_u64());
}

#[test]
fn bad_configurations_are_rejected_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 7] = [
        ("seed = 0\ncolour = 1\n", &["unknown field", "colour"]),
        (
            "[train]\nlearning_rate = 0.1\n",
            &["unknown field", "learning_rate"],
        ),
        (
            "[model]\nmodules = 4\nk = 5\n",
            &["model.k", "must not exceed"],
        ),
        ("[train]\nsamples = 0\n", &["train.samples"]),
        ("[train]\nlr = -0.5\n", &["train.lr"]),
        ("task_name = \"mnist\"\n", &["task_name"]),
        (
            "[model]\nmodules = 1\n[train]\nalgo = \"topk\"\n",
            &["model.modules", "top-k"],
        ),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let path = config(tmp.path(), &format!("bad{i}.toml"), text);
        let out = modula(
            &[
                "train",
                "--config",
                path.to_str().unwrap(),
                "--out",
                "never",
            ],
            tmp.path(),
        );
        assert_fails(&out, 1, needles);
    }
    assert!(
        !tmp.path().join("never").exists(),
        "a rejected run left a directory"
    );
    let out = modula(
        &["train", "--config", "absent.toml", "--out", "never"],
        tmp.path(),
    );
    assert_fails(&out, 1, &["absent.toml"]);
}

#[test]
fn usage_errors_exit_with_status_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["train", "--algo", "gibbs"][..],
        &["train", "--steps", "0"],
        &["train", "--threads", "0"],
        &["train", "--resume", "x", "--seed", "1"],
        &["train", "--resume", "x", "--config", "c.toml"],
        &["eval"],
    ] {
        assert_fails(&modula(args, tmp.path()), 2, &[]);
    }
}

#[test]
fn missing_and_broken_runs_and_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir(t.join("empty")).unwrap();
    assert_fails(
        &modula(&["train", "--resume", "empty"], t),
        1,
        &["holds no run"],
    );
    assert_fails(
        &modula(&["eval", "--run", "empty"], t),
        1,
        &["holds no run"],
    );
    assert_fails(
        &modula(&["train", "--resume", "nowhere"], t),
        1,
        &["does not exist"],
    );

    assert_ok(&train(t, "run", &["--steps", "40"]));
    // An existing run is never overwritten.
    assert_fails(
        &train(t, "run", &[]),
        1,
        &["already holds a run", "--resume"],
    );

    let ck = t.join("run/checkpoint.safetensors");
    let bytes = fs::read(&ck).unwrap();
    fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &modula(&["eval", "--run", "run"], t),
        1,
        &["truncated or corrupt"],
    );
    assert_fails(
        &modula(&["train", "--resume", "run", "--steps", "80"], t),
        1,
        &["truncated or corrupt"],
    );
    fs::remove_file(&ck).unwrap();
    assert_fails(&modula(&["eval", "--run", "run"], t), 1, &["checkpoint"]);
    assert_fails(
        &modula(&["train", "--resume", "run"], t),
        1,
        &["checkpoint", "missing"],
    );
}

#[test]
fn a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    assert_ok(&train(t, "run", &["--steps", "100"]));
    // Continue with a learning rate so large that the outputs overflow within steps (a
    // change to what is trained, so it must be accepted explicitly).
    let cfg = t.join("run/config.toml");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 0.01", "lr = 1e20");
    fs::write(&cfg, text).unwrap();
    let out = modula(
        &[
            "train",
            "--resume",
            "run",
            "--steps",
            "200",
            "--accept-config-change",
        ],
        t,
    );
    assert_fails(
        &out,
        1,
        &[
            "diverged at step 10",
            "last good checkpoint (step 100)",
            "checkpoint.safetensors",
        ],
    );
    let eval = modula(&["eval", "--run", "run", "--json"], t);
    assert_ok(&eval);
    let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["steps"], 100);
    assert!(eval["test_loss"].as_f64().unwrap().is_finite());

    // A run that diverges before its first periodic checkpoint keeps the one of step 0.
    let cfg = config(
        t,
        "wild.toml",
        &SMALL.replace("[train]", "[train]\nlr = 1e20"),
    );
    let out = modula(
        &["train", "--config", cfg.to_str().unwrap(), "--out", "wild"],
        t,
    );
    assert_fails(&out, 1, &["diverged at step", "(step 0)"]);
    assert!(t.join("wild/checkpoint.safetensors").is_file());
}

#[test]
fn every_task_is_bounded_by_steps_epochs_and_minutes_and_resumes_past_them() {
    let tmp = tempfile::tempdir().unwrap();
    // 1,024 examples in batches of 64: 16 steps an epoch.
    assert_ok(&train(tmp.path(), "epochs", &["--epochs", "2"]));
    assert_eq!(json(&tmp.path().join("epochs/summary.json"))["steps"], 32);
    assert_ok(&train(tmp.path(), "steps", &["--steps", "7"]));
    assert_eq!(json(&tmp.path().join("steps/summary.json"))["steps"], 7);
    // A wall-time limit this short stops the run early, with a checkpoint to resume from.
    assert_ok(&train(tmp.path(), "minutes", &["--max-minutes", "0.00001"]));
    let stopped = json(&tmp.path().join("minutes/summary.json"))["steps"]
        .as_u64()
        .unwrap();
    assert!(stopped < 200, "stopped at {stopped}");
    let dir = tmp.path().join("minutes");
    let resume = ["train", "--resume", dir.to_str().unwrap()];
    assert_ok(&modula(
        &[&resume[..], &["--max-minutes", "0"]].concat(),
        tmp.path(),
    ));
    assert_eq!(json(&dir.join("summary.json"))["steps"], 200);
    // Inspection is for language models; a toy run is told so by its task's name.
    assert_fails(
        &modula(&["inspect", "--run", dir.to_str().unwrap()], tmp.path()),
        1,
        &["toy task", "language-modelling runs"],
    );
}
