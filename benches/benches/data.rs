//! Loader speed: Penn Treebank load + vocabulary + batchify, and Fashion-MNIST decode.
//!
//! Benchmark ids are `data/{source}/{task}` with source `ptb` or `fashion-mnist` when the real
//! data has been fetched into the data directory (`$MODULA_DATA`, else the workspace's
//! `data/`), and `generated-ptb` or `generated-fashion-mnist` for same-sized stand-ins
//! otherwise, so that the figures never pass off generated data as real. `cargo xtask bench
//! data` turns them into `target/bench/data.json`; keep the ids in step with `xtask/src/bench.rs`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::Criterion;
use modula_data::text::{PTB_FILES, TextCorpus};
use modula_data::{idx, mnist_json};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Streams for batchify: the batch size of the Penn Treebank experiments.
const BATCH: usize = 20;

fn data_dir() -> PathBuf {
    match std::env::var_os("MODULA_DATA") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"),
    }
}

/// Writes a Penn-Treebank-sized corpus (42,068 lines of about 21 words from a 10,000-word
/// vocabulary, like `ptb.train.txt`) and small valid/test files.
fn generated_ptb(dir: &Path) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut write = |name: &str, lines: usize| {
        let mut text = String::new();
        for _ in 0..lines {
            for _ in 0..rng.random_range(10..32) {
                text.push_str(&format!(" w{}", rng.random_range(0..9_999)));
            }
            text.push_str(" \n");
        }
        std::fs::write(dir.join(name), text).expect("temporary directory is writable");
    };
    write(PTB_FILES[0], 42_068);
    write(PTB_FILES[1], 3_370);
    write(PTB_FILES[2], 3_761);
}

/// Writes Fashion-MNIST-sized raw IDX files of random pixels.
fn generated_fashion_mnist(dir: &Path) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (i, name) in idx::MNIST_FILES.iter().enumerate() {
        let n = if i < 2 { 60_000 } else { 10_000 };
        let bytes = if i % 2 == 0 {
            let pixels: Vec<u8> = (0..n * mnist_json::IMAGE).map(|_| rng.random()).collect();
            idx::encode(&[n, 28, 28], &pixels)
        } else {
            let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
            idx::encode(&[n], &labels)
        };
        std::fs::write(dir.join(name), bytes).expect("temporary directory is writable");
    }
}

fn data(c: &mut Criterion) {
    let scratch = std::env::temp_dir().join(format!("modula-data-bench-{}", std::process::id()));
    let real = data_dir();

    let (source, ptb) = if real.join("ptb").join(PTB_FILES[0]).is_file() {
        ("ptb", real.join("ptb"))
    } else {
        println!(
            "data bench: no fetched PTB under {}; timing a generated stand-in of the same size",
            real.display()
        );
        let dir = scratch.join("ptb");
        std::fs::create_dir_all(&dir).expect("temporary directory is writable");
        generated_ptb(&dir);
        ("generated-ptb", dir)
    };
    c.bench_function(&format!("data/{source}/load_vocab_batchify"), |bench| {
        bench.iter(|| {
            let corpus = TextCorpus::load_ptb(black_box(&ptb)).expect("PTB loads");
            black_box(corpus.train.batchify(BATCH))
        });
    });

    let fashion = real.join("fashion-mnist");
    let (source, fashion) = if fashion.join("train-images-idx3-ubyte.gz").is_file() {
        ("fashion-mnist", fashion)
    } else {
        println!(
            "data bench: no fetched Fashion-MNIST under {}; timing generated raw IDX files of the same size",
            real.display()
        );
        let dir = scratch.join("fashion-mnist");
        std::fs::create_dir_all(&dir).expect("temporary directory is writable");
        generated_fashion_mnist(&dir);
        ("generated-fashion-mnist", dir)
    };
    c.bench_function(&format!("data/{source}/decode"), |bench| {
        bench.iter(|| {
            black_box(
                idx::load_dir(black_box(&fashion), &idx::FASHION_MNIST_CLASSES)
                    .expect("Fashion-MNIST loads"),
            )
        });
    });
    // Best effort: a leftover temporary directory is harmless.
    let _ = std::fs::remove_dir_all(&scratch);
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    data(&mut criterion);
    criterion.final_summary();
}
