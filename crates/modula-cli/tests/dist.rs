//! `modula train --dist data`: without the `mpi` feature a clear error; with it, under
//! `mpirun`, a run written by four ranks resumes on two ranks and in one process with the
//! continuation of the uninterrupted one-process run, and image runs (EM and the dense
//! baseline) and a toy run of the dense baseline on two ranks train as one process.

use std::path::Path;
use std::process::{Command, Output};

/// A small toy EM run: 240 examples in batches of 48, two modular layers of four modules
/// with two slots, an E-step every third iteration, a record every third.
const CONFIG: &str = "task_name = \"toy\"
seed = 3
threads = 1
[task]
train = 240
test = 64
[model]
modules = 4
k = 2
layers = 2
hidden = 8
[train]
steps = 12
batch_size = 48
samples = 4
e_every = 3
log_every = 3
checkpoint_every = 6
";

fn modula() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modula"))
}

/// Runs `cmd` and returns its output, failing the test with it unless it ended as `ok` says.
fn expect(cmd: &mut Command, ok: bool) -> Output {
    let out = cmd.output().expect("the command starts");
    assert_eq!(
        out.status.success(),
        ok,
        "{cmd:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("toy.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

#[cfg(not(feature = "mpi"))]
#[test]
fn dist_without_mpi_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path());
    let out = expect(
        modula()
            .arg("train")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(tmp.path().join("run"))
            .args(["--dist", "data"]),
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features mpi"), "{err}");
    assert!(!tmp.path().join("run").exists(), "a run directory was made");
}

#[cfg(feature = "mpi")]
mod common;

/// A small EM run of a modular conv net on stand-in digits: 240 training images in batches
/// of 24 (ten per epoch), a record every second iteration, evaluations every sixth.
#[cfg(feature = "mpi")]
const IMAGE_CONFIG: &str = "task_name = \"mnist-10k\"
seed = 5
threads = 1
[task]
train_examples = 240
test_examples = 100
[model]
kind = \"conv\"
modules = 3
k = 1
channels = [4, 8, 8]
[train]
algo = \"em\"
steps = 12
batch_size = 24
lr = 0.003
log_every = 2
eval_every = 6
eval_train_examples = 100
checkpoint_every = 6
";

#[cfg(feature = "mpi")]
mod under_mpi {
    use std::path::Path;
    use std::process::Command;

    use super::{IMAGE_CONFIG, common, expect, modula, write_config};

    /// Largest accepted `|got - want| / (1 + |want|)` between a data-parallel run's records
    /// and one process's: the data-parallel gradient is a sum of per-rank sums, so parameters
    /// differ by f32 rounding (under 1e-7 in modula-dist's data-parallel tests, which explain
    /// the bound).
    const TOL: f64 = 1e-4;

    /// The records' figures that every rank count must reproduce (the controller's batch
    /// perplexity is the ranks' mean in a data-parallel run, and throughput is a timing).
    const FIGURES: [&str; 7] = [
        "task_nll", "ctrl_nll", "changed", "test_mse", "test_nll", "purity", "step",
    ];

    fn mpirun(ranks: usize) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.args(["--oversubscribe", "--allow-run-as-root", "-np"])
            .arg(ranks.to_string())
            .arg(env!("CARGO_BIN_EXE_modula"));
        cmd
    }

    fn records(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// An image run's figures that every rank count must reproduce.
    const IMAGE_FIGURES: [&str; 8] = [
        "train_loss",
        "ctrl_nll",
        "changed",
        "train_nll",
        "train_accuracy",
        "test_nll",
        "test_accuracy",
        "step",
    ];

    fn same_records(what: &str, got: &Path, want: &Path) {
        same_figures(what, got, want, &FIGURES);
    }

    /// Every record of `got` has the figures `keys` of `want`'s within [`TOL`], and its
    /// module usage exactly.
    fn same_figures(what: &str, got: &Path, want: &Path, keys: &[&str]) {
        let (got, want) = (records(got), records(want));
        assert_eq!(got.len(), want.len(), "{what}: record count");
        for (g, w) in got.iter().zip(&want) {
            for &key in keys {
                let (gv, wv) = (g[key].as_f64(), w[key].as_f64());
                let (Some(gv), Some(wv)) = (gv, wv) else {
                    assert_eq!(gv, wv, "{what}: {key} in {g} against {w}");
                    continue;
                };
                assert!(
                    (gv - wv).abs() <= TOL * (1.0 + wv.abs()),
                    "{what}: {key} is {gv}, one process has {wv}, at step {}",
                    w["step"]
                );
            }
            assert_eq!(
                g["usage"], w["usage"],
                "{what}: usage at step {}",
                w["step"]
            );
        }
    }

    #[test]
    fn a_four_rank_run_resumes_on_two_ranks_and_in_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path());
        let dir = |name: &str| tmp.path().join(name);
        expect(
            modula()
                .arg("train")
                .arg("--config")
                .arg(&config)
                .arg("--out")
                .arg(dir("one")),
            true,
        );
        expect(
            mpirun(4)
                .arg("train")
                .arg("--config")
                .arg(&config)
                .args(["--steps", "6", "--dist", "data", "--out"])
                .arg(dir("four")),
            true,
        );
        for name in ["on-two", "in-one"] {
            std::fs::create_dir(dir(name)).unwrap();
            for file in ["config.toml", "metrics.jsonl", "checkpoint.safetensors"] {
                std::fs::copy(dir("four").join(file), dir(name).join(file)).unwrap();
            }
        }
        expect(
            mpirun(2)
                .args(["train", "--steps", "12", "--dist", "data", "--resume"])
                .arg(dir("on-two")),
            true,
        );
        expect(
            modula()
                .args(["train", "--steps", "12", "--resume"])
                .arg(dir("in-one")),
            true,
        );
        same_records("four ranks, then two", &dir("on-two"), &dir("one"));
        same_records("four ranks, then one process", &dir("in-one"), &dir("one"));
    }

    /// A rank that fails ends the whole job, named, instead of leaving the others waiting in
    /// a collective: rank 0 refuses a directory that holds a run while rank 1 goes on to the
    /// first checkpoint's collective. A job still running after 60 s (issue 23's bound) is
    /// killed and fails the test as hung.
    #[test]
    fn a_failed_rank_ends_the_job_and_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path());
        let run = tmp.path().join("run");
        expect(
            modula()
                .arg("train")
                .arg("--config")
                .arg(&config)
                .args(["--steps", "1", "--out"])
                .arg(&run),
            true,
        );
        let mut child = mpirun(2)
            .arg("train")
            .arg("--config")
            .arg(&config)
            .args(["--dist", "data", "--out"])
            .arg(&run)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(60) {
                // Our own child, by its id.
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "the job succeeded:\n{text}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the job hung:\n{text}"
        );
        // OpenMPI 4 names the first failed process `[[job,1],rank]`.
        assert!(
            text.contains("already holds a run") && text.contains(",1],0]"),
            "the failed rank is not named:\n{text}"
        );
    }

    /// Image EM on two ranks (each owning half of the 240 training positions, so of every
    /// shuffled batch) against one process: every record's losses, E-step change rate and
    /// accuracies within [`TOL`], and the module usage exactly.
    /// An image run, EM and the dense baseline (a conv net either way), on two ranks trains as
    /// one process.
    #[test]
    fn an_image_run_on_two_ranks_trains_as_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let data = common::write_mnist_10k(tmp.path());
        let config = tmp.path().join("mnist.toml");
        std::fs::write(&config, IMAGE_CONFIG).unwrap();
        let dir = |name: &str| tmp.path().join(name);
        for algo in ["em", "dense"] {
            let (one, two) = (format!("{algo}-one"), format!("{algo}-two"));
            expect(
                modula()
                    .env("MODULA_DATA", &data)
                    .arg("train")
                    .arg("--config")
                    .arg(&config)
                    .args(["--algo", algo, "--out"])
                    .arg(dir(&one)),
                true,
            );
            expect(
                mpirun(2)
                    // The ranks inherit mpirun's environment (all run on this machine).
                    .env("MODULA_DATA", &data)
                    .arg("train")
                    .arg("--config")
                    .arg(&config)
                    .args(["--algo", algo, "--dist", "data", "--out"])
                    .arg(dir(&two)),
                true,
            );
            same_figures(
                &format!("image {algo} on two ranks"),
                &dir(&two),
                &dir(&one),
                &IMAGE_FIGURES,
            );
        }
    }

    /// The dense baseline distributes too (nothing per example, a mean loss). The guard
    /// stops only non-finite losses: this small network's batch losses spread over more than
    /// the default factor of ten.
    #[test]
    fn a_dense_toy_run_on_two_ranks_trains_as_one_process() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("dense.toml");
        std::fs::write(
            &config,
            format!("{}divergence_factor = 0.0\n", super::CONFIG),
        )
        .unwrap();
        let dir = |name: &str| tmp.path().join(name);
        let args = ["--algo", "dense", "--out"];
        expect(
            modula()
                .arg("train")
                .arg("--config")
                .arg(&config)
                .args(args)
                .arg(dir("one")),
            true,
        );
        expect(
            mpirun(2)
                .arg("train")
                .arg("--config")
                .arg(&config)
                .args(["--dist", "data"])
                .args(args)
                .arg(dir("two")),
            true,
        );
        same_records("dense on two ranks", &dir("two"), &dir("one"));
    }

    #[test]
    fn a_run_that_cannot_be_distributed_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let config = write_config(tmp.path());
        let out = expect(
            mpirun(2)
                .arg("train")
                .arg("--config")
                .arg(&config)
                .args(["--algo", "topk", "--dist", "data", "--out"])
                .arg(tmp.path().join("run")),
            false,
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("train.algo"), "{text}");
        assert!(
            !tmp.path().join("run").exists(),
            "a refused run left its directory behind"
        );
    }
}
