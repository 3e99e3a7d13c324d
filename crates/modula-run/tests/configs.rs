//! Every configuration shipped under `configs/` (the experiments' pages name them in their
//! commands) parses and validates, so that a renamed or removed key breaks this test instead
//! of a user's run hours into an experiment. The continual experiments' files
//! (`configs/continual-*.toml`) are read as such.

use std::fs;
use std::path::{Path, PathBuf};

use modula_run::RunConfig;

/// Every `.toml` file below `dir`, depth first.
fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(tomls(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found
}

#[test]
fn every_shipped_configuration_parses_and_validates() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let files = tomls(&configs);
    assert!(
        files.iter().any(|f| f.ends_with("ptb-em-step.toml")),
        "the walk missed configs/: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("continual-split-fashion.toml")),
        "the walk missed the continual experiments: {files:?}"
    );
    for file in files {
        // A continual experiment's file is its own format (`modula continual run`).
        let name = file.file_name().unwrap().to_string_lossy();
        if name.starts_with("continual-") {
            modula_run::continual::read_config(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            continue;
        }
        let cfg = RunConfig::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}
