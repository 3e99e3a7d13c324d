//! The `modula` binary end to end: exit codes, messages and JSON.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::stderr;

fn modula(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modula"))
        .args(args)
        .env("MODULA_DATA", data_dir)
        .output()
        .expect("the modula binary runs")
}

#[test]
fn info_on_unfetched_data_exits_1_with_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = modula(&["data", "info", "ptb"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains(&dir.path().join("ptb").display().to_string()),
        "{message}"
    );
    assert!(message.contains("modula data fetch ptb"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn corrupt_files_exit_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("batch.bin", &[0u8; 3074], "3,073"),
        ("images.idx", &[0, 0, 8, 1, 0, 0, 0, 9, 1], "truncated"),
        ("bad.txt", b"caf\xe9\n", "UTF-8"),
        ("empty.txt", b"", "empty"),
    ];
    for (name, bytes, what) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = modula(&["data", "info", path.to_str().unwrap()], dir.path());
        assert_eq!(out.status.code(), Some(1), "{name}");
        let message = stderr(&out);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(what), "{name}: {message}");
    }
    // An explicit --format overrides the guess, and the chosen parser still rejects bad bytes.
    let path = dir.path().join("images.idx");
    let out = modula(
        &[
            "data",
            "info",
            path.to_str().unwrap(),
            "--format",
            "cifar10",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["data", "info"][..],
        &["data", "info", "ptb", "--format", "bogus"],
        &["data", "frobnicate"],
        &[],
    ] {
        let out = modula(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn fetch_cifar_without_a_source_explains_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = modula(&["data", "fetch", "cifar-10"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no package registry"));
    let out = modula(&["data", "fetch", "imagenet"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown data set `imagenet`"));
}

#[test]
fn info_json_for_text_and_idx() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("corpus.txt");
    let lines: Vec<String> = (0..20)
        .map(|i| format!("w{} w{} end", i % 3, i % 7))
        .collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    let out = modula(
        &["data", "info", text.to_str().unwrap(), "--json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "text");
    assert_eq!(json["train"]["lines"], 16);
    assert_eq!(json["valid"]["lines"], 2);
    assert_eq!(json["test"]["lines"], 2);
    assert_eq!(json["train_tokens"], 16 * 4);
    assert!(json["vocab"].as_u64().unwrap() <= 2 + 3 + 7 + 1);

    let idx_dir = dir.path().join("digits");
    std::fs::create_dir(&idx_dir).unwrap();
    let files: [(&str, Vec<u8>); 4] = [
        ("train-images-idx3-ubyte", header(&[3, 2, 2], 12)),
        ("train-labels-idx1-ubyte", header(&[3], 3)),
        ("t10k-images-idx3-ubyte", header(&[1, 2, 2], 4)),
        ("t10k-labels-idx1-ubyte", header(&[1], 1)),
    ];
    for (name, bytes) in files {
        std::fs::write(idx_dir.join(name), bytes).unwrap();
    }
    let out = modula(
        &["data", "info", idx_dir.to_str().unwrap(), "--json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["train"]["count"], 3);
    assert_eq!(json["test"]["count"], 1);
    assert_eq!(json["shape"], serde_json::json!([2, 2, 1]));
    let out = modula(&["data", "info", idx_dir.to_str().unwrap()], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("train: 3 images"));
}

/// An IDX file of zeros with the given dimensions.
fn header(dims: &[u32], n: usize) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.resize(bytes.len() + n, 0);
    bytes
}
