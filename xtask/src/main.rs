//! Project automation for modula, run as `cargo xtask <command>` (an alias defined in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: formatting, clippy and the whole test suite (Rust, then the Python
//!   package's pytest suite on its freshly built wheel), stopping at the first failure.
//! - `cargo xtask wheel`: the Python package's wheel, built by maturin into `target/wheels/`.
//! - `cargo xtask bench [NAME...]`: criterion benches with short sample sizes, turned into JSON
//!   figures under `target/bench/`; `cargo xtask bench dist` times the expert-parallel layer
//!   under `mpirun` instead.
//! - `cargo xtask dist-model`: the cost model of docs/distributed.md, projecting the
//!   expert-parallel step time to 8..1024 ranks from `bench dist`'s figures.
//! - `cargo xtask tidy`: source-tree checks (no circular imports between a library crate's
//!   files), also run by the test suite.
//! - `cargo xtask data NAME [ARGS...]`: fetch a data set, by running `modula data fetch` (the
//!   modula-cli binary), so the fetch code lives in one place: the modula-data library.
//!
//! Like rust-analyzer's xtask, this crate depends on std and serde_json only, so it compiles
//! in seconds and never slows down the checks it runs.

mod bench;
mod bench_dist;
mod bench_sparse;
mod ci;
mod data;
mod dist_model;
mod python;
mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

/// Printed for `help`, and on stderr for an unknown command.
const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                  cargo fmt --check, cargo clippy -D warnings, cargo test --workspace,
                      then the Python wheel and its pytest suite (needs python3 with maturin,
                      pytest and numpy: python3 -m pip install maturin pytest numpy)
  wheel               build the Python package's wheel (release) into target/wheels/
  bench [NAME...]     run criterion benches (all if no NAME) and write target/bench/NAME.json
        --python PY   run the GEMM peers (MKL: the `mkl` wheel or torch; numpy) with PY
                      (default: $MODULA_BENCH_PYTHON, else python3)
        --no-peers    time modula alone
        -- ARGS       pass ARGS on to criterion (for example a benchmark-id filter)
        --import DIR  write the JSON from results produced elsewhere (DIR/criterion,
                      DIR/bench, DIR/machine.json) instead of running the benches
  bench dist          the expert-parallel modular layer under mpirun at 1, 2 and 4 ranks
                      (compute and exchange time, bytes) into target/bench/dist.json
  dist-model          project the expert-parallel step time and scaling efficiency to
                      P = 8..1024 ranks from target/bench/dist.json's one-rank compute times
        --input FILE  read FILE instead (e.g. docs/distributed-results.json)
        --bandwidth-gbs B --latency-us L
                      a network of B GB/s and L us per rank (default: two assumed fabrics)
        --speedup X   divide the measured compute by X (default: 1 and 100)
        --json FILE   also write the rows as JSON
  data NAME [ARGS]    fetch a data set (ptb, fashion-mnist, mnist-10k, cifar-10) into data/
                      via `modula data fetch NAME ARGS` (e.g. --from PATH, --data-dir DIR)
  tidy                check that no library crate's files import each other in a circle
  help                print this message
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "ci" if rest.is_empty() => ci::run(),
        // Not a criterion bench: an MPI job at several rank counts.
        "bench" if rest == ["dist"] => bench_dist::run(),
        "bench" => match bench::Options::parse(rest) {
            Ok(options) => bench::run(&options),
            Err(message) => {
                eprintln!("xtask bench: {message}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        "data" => data::run(rest),
        "dist-model" => dist_model::run(rest),
        "tidy" if rest.is_empty() => tidy::run(),
        "wheel" if rest.is_empty() => python::wheel().map(|path| println!("{}", path.display())),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("xtask: unknown command `{}`\n\n{USAGE}", args.join(" "));
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {command}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
///
/// Commands run from there, so `cargo xtask` behaves the same from any subdirectory.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("the xtask crate lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo binary that started us, so that a toolchain chosen by rustup is used throughout.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` as criterion does.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
