//! Real-data tests: run when the data set has been fetched into the data directory
//! (`$MODULA_DATA`, else the workspace's `data/`); otherwise they print why they were skipped
//! and pass, except under `CI=true`, where missing data is a failure.

use std::path::{Path, PathBuf};

use modula_data::fetch::{PTB_MD5, md5_hex};
use modula_data::text::PTB_FILES;
use modula_data::{Dataset, TextCorpus, idx};

/// The data directory the CLI would use from the workspace root.
fn data_dir() -> PathBuf {
    match std::env::var_os("MODULA_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    }
}

/// The data set's directory, or `None` (after saying why) when it has not been fetched.
///
/// # Panics
/// Under `CI=true` when the data is missing, because CI fetches it first.
fn dataset(name: &str, probe: &str) -> Option<PathBuf> {
    let dir = data_dir().join(name);
    if dir.join(probe).is_file() {
        return Some(dir);
    }
    let why = format!(
        "{} not found; run `cargo run --release -p modula-cli -- data fetch {name}`",
        dir.join(probe).display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the real data is missing: {why}");
    }
    eprintln!("skipped: {why}");
    None
}

#[test]
fn ptb_counts() {
    let Some(dir) = dataset("ptb", "ptb.train.txt") else {
        return;
    };
    for (name, md5) in PTB_FILES.iter().zip(PTB_MD5) {
        assert_eq!(
            md5_hex(&std::fs::read(dir.join(name)).unwrap()),
            md5,
            "{name}"
        );
    }
    let corpus = TextCorpus::load_ptb(&dir).unwrap();
    assert_eq!(corpus.vocab.len(), 10_000);
    assert_eq!(corpus.train.len(), 929_589);
    assert_eq!(corpus.train.tokens_without_eos(), 887_521);
    assert_eq!(corpus.valid.len(), 73_760);
    assert_eq!(corpus.test.len(), 82_430);
    assert_eq!(corpus.valid.global_index(0), 929_589);
    let streams = corpus.train.batchify(20);
    assert_eq!(streams.len, 929_589 / 20);
    assert_eq!(
        streams.windows(35).count(),
        (929_589usize / 20 - 1).div_ceil(35)
    );
}

#[test]
fn fashion_mnist_counts() {
    let Some(dir) = dataset("fashion-mnist", "train-images-idx3-ubyte.gz") else {
        return;
    };
    let set = idx::load_dir(&dir, &idx::FASHION_MNIST_CLASSES).unwrap();
    assert_eq!(set.train.len(), 60_000);
    assert_eq!((set.train.height, set.train.width), (28, 28));
    assert_eq!(set.train.per_class(), vec![6_000; 10]);
    let test = set.test.unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.per_class(), vec![1_000; 10]);
    assert_eq!(test.global_index(0), 60_000);
}
