//! What `modula train` promises about a run directory besides surviving crashes
//! (`tests/crash.rs`): one process at a time, a resume that continues the same run unless a
//! change is accepted, and directories in other states refused with one message each.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{SMALL, assert_fails, assert_ok, json, modula, stderr};

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("small.toml"), SMALL).unwrap();
    tmp
}

fn train(tmp: &Path, out: &str, flags: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--config", "small.toml", "--out", out];
    args.extend_from_slice(flags);
    modula(&args, tmp)
}

/// Starts a run that trains until it is killed, and waits until it holds its directory.
fn endless(tmp: &Path, out: &str) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_modula"))
        .args(["train", "--config", "small.toml", "--out", out])
        .args(["--steps", "100000000"])
        .current_dir(tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = tmp.join(out).join("checkpoint.safetensors");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ck.exists() {
        assert!(
            Instant::now() < deadline,
            "the endless run never checkpointed"
        );
        sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn a_second_process_is_refused_at_once_naming_the_holder_and_the_lock_dies_with_it() {
    let tmp = setup();
    let t = tmp.path();
    let mut first = endless(t, "run");
    let pid = format!("PID {}", first.id());
    // Either would otherwise write into the directory the first run is writing.
    for args in [
        &["train", "--resume", "run"][..],
        &["train", "--config", "small.toml", "--out", "run"],
    ] {
        let out = modula(args, t);
        assert_fails(&out, 1, &["in use by another modula process", &pid]);
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock went with the process: the killed run continues.
    assert_ok(&modula(&["train", "--resume", "run", "--steps", "300"], t));
    assert_eq!(json(&t.join("run/summary.json"))["steps"], 300);
}

#[test]
fn a_resume_refuses_changes_to_what_is_trained_unless_accepted_and_recorded() {
    let tmp = setup();
    let t = tmp.path();
    assert_ok(&train(t, "run", &["--steps", "100"]));
    let cfg = t.join("run/config.toml");
    let original = fs::read_to_string(&cfg).unwrap();
    for (from, to, field, shown) in [
        ("seed = 0", "seed = 7", "seed", ["7", "0"]),
        ("lr = 0.01", "lr = 0.02", "train.lr", ["0.02", "0.01"]),
        (
            "train = 1024",
            "train = 2048",
            "task.train",
            ["2048", "1024"],
        ),
        ("modules = 6", "modules = 4", "model.modules", ["4", "6"]),
    ] {
        fs::write(&cfg, original.replace(from, to)).unwrap();
        let out = modula(&["train", "--resume", "run", "--steps", "200"], t);
        let both = format!(
            "`{field}` is {} in config.toml but {} in the checkpoint",
            shown[0], shown[1]
        );
        assert_fails(&out, 1, &[&both, "--accept-config-change"]);
    }
    // Fields that only change how the run executes need no flag.
    let execution = original
        .replace("log_every = 40", "log_every = 20")
        .replace("checkpoint_every = 100", "checkpoint_every = 50")
        .replace("threads = 2", "threads = 1");
    fs::write(&cfg, execution).unwrap();
    assert_ok(&modula(&["train", "--resume", "run", "--steps", "150"], t));
    assert!(!t.join("run/changes.jsonl").exists());
    // An accepted change goes into the history, and the checkpoint takes the new value, so
    // the next resume has nothing to accept.
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = 0.01", "lr = 0.02");
    fs::write(&cfg, text).unwrap();
    let flags = ["train", "--resume", "run", "--steps", "200"];
    assert_ok(&modula(
        &[&flags[..], &["--accept-config-change"]].concat(),
        t,
    ));
    let changes: Vec<Value> = fs::read_to_string(t.join("run/changes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["field"], "train.lr");
    assert_eq!(changes[0]["step"], 150);
    assert_eq!(
        (changes[0]["from"].as_f64(), changes[0]["to"].as_f64()),
        (Some(0.01), Some(0.02))
    );
    assert_ok(&modula(&["train", "--resume", "run", "--steps", "250"], t));
}

#[test]
fn directories_in_other_states_get_one_message_each() {
    let tmp = setup();
    let t = tmp.path();
    // Run files without a checkpoint: neither command touches them.
    fs::create_dir(t.join("stray")).unwrap();
    let stray = "{\"step\":40}\n";
    fs::write(t.join("stray/metrics.jsonl"), stray).unwrap();
    for out in [
        train(t, "stray", &[]),
        modula(&["train", "--resume", "stray"], t),
    ] {
        assert_fails(
            &out,
            1,
            &[
                "metrics.jsonl",
                "checkpoint.safetensors is missing",
                "choose another directory",
            ],
        );
    }
    assert_eq!(
        fs::read_to_string(t.join("stray/metrics.jsonl")).unwrap(),
        stray
    );
    assert!(!t.join("stray/loss.png").exists());
    // A file where the directory should be.
    fs::write(t.join("file"), "x").unwrap();
    assert_fails(
        &train(t, "file", &[]),
        1,
        &["file is a file, not a directory"],
    );
    assert_fails(
        &modula(&["train", "--resume", "file"], t),
        1,
        &["it is a file"],
    );
    // Nothing there: --resume says how to start.
    assert_fails(
        &modula(&["train", "--resume", "nowhere"], t),
        1,
        &["does not exist", "`modula train --out nowhere`"],
    );
    // A run stopped before its first checkpoint: eval points to --resume, which starts it.
    fs::create_dir(t.join("early")).unwrap();
    fs::copy(t.join("small.toml"), t.join("early/config.toml")).unwrap();
    assert_fails(
        &modula(&["eval", "--run", "early"], t),
        1,
        &["no checkpoint yet", "`modula train --resume early`"],
    );
    let out = modula(&["train", "--resume", "early"], t);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("starting it again from step 0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(json(&t.join("early/summary.json"))["steps"], 200);
}

#[test]
fn a_damaged_or_shortened_history_is_refused_not_silently_cut() {
    let tmp = setup();
    let t = tmp.path();
    assert_ok(&train(t, "run", &[]));
    let path = t.join("run/metrics.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // A damaged line in the middle.
    let damaged = format!("{}\n{{\"step\":8\n{}\n", lines[0], lines[2..].join("\n"));
    fs::write(&path, &damaged).unwrap();
    let out = modula(&["train", "--resume", "run", "--steps", "300"], t);
    assert_fails(&out, 1, &["metrics.jsonl line 2 is not a JSON record"]);
    assert_eq!(fs::read_to_string(&path).unwrap(), damaged);
    // Records lost from the end (the checkpoint at step 200 counts five).
    fs::write(&path, format!("{}\n", lines[..3].join("\n"))).unwrap();
    let out = modula(&["train", "--resume", "run", "--steps", "300"], t);
    assert_fails(&out, 1, &["holds 3 records up to step 200", "after 5"]);
    // Whole again, it resumes.
    fs::write(&path, &text).unwrap();
    assert_ok(&modula(&["train", "--resume", "run", "--steps", "300"], t));
}
