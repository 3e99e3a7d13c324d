//! `modula train --backend wgpu` and `modula eval` on it: the toy EM task trains on the wgpu
//! backend and its logged curves track a CPU run with the same seed; a missing adapter and an
//! unknown backend are clean errors.
//!
//! Both runs see the same data, initialisation and mini-batches, but the kernels sum in
//! another order, so they are not bit-identical and could drift apart after an E-step's
//! near-tie. Each logging interval's mean task NLL must therefore agree within
//! `0.01 + 1%` of the CPU's, and each interval's test MSE within 5% of the CPU's, the
//! tolerances of modula-wgpu's own training test. On lavapipe they agree far more closely
//! (the test prints the largest differences).

use std::fs;
use std::path::Path;

use modula_wgpu::testing::backend_or_skip;
use serde_json::Value;

mod common;
use common::{assert_fails, assert_ok, modula_env as modula, stderr};

/// 300 iterations of batch 64 on a small task: long enough for the loss to fall well and
/// for several E-steps, short enough to stay within seconds on lavapipe.
const CONFIG: &str = r#"
seed = 7
threads = 1

[task]
train = 1024
test = 256

[train]
steps = 300
batch_size = 64
log_every = 50
checkpoint_every = 300
"#;

fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `(task_nll, test_mse)` of every line of a run's `metrics.jsonl`.
fn curve(dir: &Path) -> Vec<(f64, f64)> {
    fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["task_nll"].as_f64().unwrap(),
                v["test_mse"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn backend_of(dir: &Path) -> String {
    let cfg: toml::Table = fs::read_to_string(dir.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    cfg["backend"].as_str().unwrap().to_string()
}

#[test]
fn wgpu_training_tracks_the_cpu_run_and_eval_reuses_the_backend() {
    // The test process opens the adapter only to apply the skip rule; the runs open their own.
    if backend_or_skip("wgpu_training_tracks_the_cpu_run_and_eval_reuses_the_backend").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("small.toml"), CONFIG).unwrap();
    let base = ["train", "--config", "small.toml", "--out"];
    assert_ok(&modula(&[&base[..], &["cpu"]].concat(), tmp.path(), &[]));
    let out = modula(
        &[&base[..], &["gpu", "--backend", "wgpu"]].concat(),
        tmp.path(),
        &[],
    );
    assert_ok(&out);
    assert!(stderr(&out).contains("wgpu on "), "{}", stderr(&out));
    let (cpu, gpu) = (tmp.path().join("cpu"), tmp.path().join("gpu"));

    assert_eq!(backend_of(&cpu), "cpu");
    assert_eq!(backend_of(&gpu), "wgpu");
    let (cpu_summary, gpu_summary) = (
        json(&cpu.join("summary.json")),
        json(&gpu.join("summary.json")),
    );
    assert_eq!(cpu_summary["backend"], "cpu");
    assert!(cpu_summary.get("adapter").is_none(), "{cpu_summary}");
    assert_eq!(gpu_summary["backend"], "wgpu");
    assert!(!gpu_summary["adapter"].as_str().unwrap().is_empty());
    assert!(gpu_summary["adapter_type"].is_string());

    let (c, g) = (curve(&cpu), curve(&gpu));
    assert_eq!(c.len(), 6);
    assert_eq!(c.len(), g.len());
    let (mut nll_diff, mut mse_rel) = (0.0f64, 0.0f64);
    for (i, ((c_nll, c_mse), (g_nll, g_mse))) in c.iter().zip(&g).enumerate() {
        assert!(
            (c_nll - g_nll).abs() <= 0.01 + 0.01 * c_nll.abs(),
            "interval {i}: task NLL {g_nll} on wgpu, {c_nll} on the CPU"
        );
        assert!(
            (c_mse - g_mse).abs() <= 0.05 * c_mse,
            "interval {i}: test MSE {g_mse} on wgpu, {c_mse} on the CPU"
        );
        nll_diff = nll_diff.max((c_nll - g_nll).abs());
        mse_rel = mse_rel.max((c_mse - g_mse).abs() / c_mse);
    }
    eprintln!(
        "cpu vs wgpu ({}): largest task NLL difference {nll_diff:.2e} nats, largest relative test MSE difference {mse_rel:.2e}",
        gpu_summary["adapter"]
    );
    // Training did something on wgpu: the loss fell.
    assert!(g.last().unwrap().0 < g[0].0, "{g:?}");

    // Eval takes the backend from the run's config.toml, and on the same backend reproduces
    // the summary's figures.
    let eval = modula(&["eval", "--run", "gpu", "--json"], tmp.path(), &[]);
    assert_ok(&eval);
    let eval: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["backend"], "wgpu");
    assert_eq!(eval["adapter"], gpu_summary["adapter"]);
    assert_eq!(eval["test_loss"], gpu_summary["test_loss"]);
    // A wgpu checkpoint evaluates on the CPU too, to the same tolerance.
    let on_cpu = modula(
        &["eval", "--run", "gpu", "--json", "--backend", "cpu"],
        tmp.path(),
        &[],
    );
    assert_ok(&on_cpu);
    let on_cpu: Value = serde_json::from_slice(&on_cpu.stdout).unwrap();
    assert_eq!(on_cpu["backend"], "cpu");
    let (a, b) = (
        on_cpu["test_loss"].as_f64().unwrap(),
        gpu_summary["test_loss"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 0.05 * b,
        "test MSE {a} on the CPU, {b} on wgpu"
    );
}

#[test]
fn no_matching_adapter_is_a_clear_error_saying_what_to_install() {
    // An adapter filter that matches nothing is how a machine without a driver looks to the
    // CLI, whatever adapters this machine has.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("small.toml"), CONFIG).unwrap();
    let filter = [("MODULA_WGPU_ADAPTER", "no-such-adapter-anywhere")];
    let out = modula(
        &[
            "train",
            "--config",
            "small.toml",
            "--out",
            "run",
            "--backend",
            "wgpu",
        ],
        tmp.path(),
        &filter,
    );
    assert_fails(
        &out,
        1,
        &[
            "--backend wgpu",
            "MODULA_WGPU_ADAPTER",
            "mesa-vulkan-drivers libvulkan1",
            "--backend cpu",
        ],
    );
    assert!(
        !tmp.path().join("run").exists(),
        "the refused run left its directory"
    );

    // A CPU run's eval asked onto wgpu fails the same way.
    assert_ok(&modula(
        &[
            "train",
            "--config",
            "small.toml",
            "--out",
            "cpu",
            "--steps",
            "10",
        ],
        tmp.path(),
        &[],
    ));
    let eval = modula(
        &["eval", "--run", "cpu", "--backend", "wgpu"],
        tmp.path(),
        &filter,
    );
    assert_fails(&eval, 1, &["mesa-vulkan-drivers libvulkan1"]);
}

#[test]
fn unknown_backends_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("tpu.toml"),
        format!("backend = \"tpu\"\n{CONFIG}"),
    )
    .unwrap();
    let out = modula(
        &["train", "--config", "tpu.toml", "--out", "run"],
        tmp.path(),
        &[],
    );
    assert_fails(&out, 1, &["`backend` is \"tpu\"", "\"cpu\" and \"wgpu\""]);
    let out = modula(&["train", "--backend", "tpu"], tmp.path(), &[]);
    assert_fails(&out, 2, &["--backend"]);
}
