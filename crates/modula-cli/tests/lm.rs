//! End-to-end tests of Penn Treebank language modelling through the CLI: a smoke run on a
//! slice of PTB (the whole pipeline: train, resume, summary, inspect, report), and the error
//! paths of LM configurations. The smoke test needs `modula data fetch ptb`; without the data
//! it says so and passes, except under `CI=true`, where CI has fetched it first.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{assert_fails, assert_ok, json, modula, ptb_data_dir};

/// A small model on the first 24,000 training tokens: about a second per epoch in test builds.
fn smoke_config(dir: &Path, data: &Path) -> PathBuf {
    let text = format!(
        r#"task_name = "ptb"
threads = 2
data_dir = {data:?}

[model]
embed = 32
hidden = 32
modules = 3
k = 1
dropout = 0.0

[train]
epochs = 2
bptt = 20
batch_size = 16
lr = 0.005
train_tokens = 24000
eval_tokens = 6000
log_every = 10
eval_every = 25
checkpoint_every = 20
"#
    );
    let path = dir.join("smoke.toml");
    fs::write(&path, text).unwrap();
    path
}

fn valid_ppls(run: &Path) -> Vec<f64> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["valid_ppl"].as_f64())
        .collect()
}

/// The run's `metrics.jsonl` records without their `tokens_per_s`, the one field that depends
/// on the machine rather than the computation.
fn records_without_timing(run: &Path) -> Vec<Value> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

#[test]
fn ptb_smoke_run_trains_resumes_and_reports() {
    let Some(data) = ptb_data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = smoke_config(tmp.path(), &data);
    let cfg = cfg.to_str().unwrap();

    // EM: one epoch, then resumed to the second.
    assert_ok(&modula(
        &["train", "--config", cfg, "--epochs", "1", "--out", "em"],
        tmp.path(),
    ));
    let em = tmp.path().join("em");
    assert_eq!(json(&em.join("summary.json"))["epochs"], 1);
    assert_ok(&modula(
        &["train", "--resume", "em", "--epochs", "2"],
        tmp.path(),
    ));
    let summary = json(&em.join("summary.json"));
    assert_eq!(summary["finished"], true);
    assert_eq!(summary["epochs"], 2);
    assert!(summary["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["test_usage"].as_array().unwrap().len(), 3);
    // Perplexity falls: from about the vocabulary size to well below it.
    let ppl = valid_ppls(&em);
    assert!(ppl.len() >= 3, "{ppl:?}");
    assert!(ppl.last().unwrap() < &(0.5 * ppl[0]), "{ppl:?}");
    assert!(summary["test_ppl"].as_f64().unwrap() < 2000.0, "{summary}");
    // Resuming at the epoch boundary changes nothing: the same two epochs in one run log the
    // same records (timings aside) and end with the same perplexities.
    assert_ok(&modula(
        &["train", "--config", cfg, "--out", "em-whole"],
        tmp.path(),
    ));
    let whole = tmp.path().join("em-whole");
    assert_eq!(records_without_timing(&whole), records_without_timing(&em));
    let whole_summary = json(&whole.join("summary.json"));
    assert_eq!(whole_summary["test_ppl"], summary["test_ppl"]);
    // `modula eval` rebuilds the language model from the run directory and repeats the
    // summary's greedy validation and test perplexities exactly.
    let out = modula(&["eval", "--run", "em", "--json"], tmp.path());
    assert_ok(&out);
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["valid_ppl", "test_ppl", "effective_modules"] {
        assert_eq!(eval[key], summary[key], "{key}: {eval}");
    }
    assert_eq!(
        (eval["task"].as_str(), eval["algo"].as_str()),
        (Some("ptb"), Some("em"))
    );

    // The dense baseline, then the introspection and the report over both runs.
    assert_ok(&modula(
        &[
            "train", "--config", cfg, "--algo", "dense", "--out", "dense",
        ],
        tmp.path(),
    ));
    assert_ok(&modula(&["inspect", "--run", "em"], tmp.path()));
    for file in [
        "inspect.md",
        "inspect.json",
        "heatmap.png",
        "heatmap.svg",
        "usage.png",
    ] {
        assert!(em.join(file).is_file(), "{file} missing");
    }
    let report = json(&em.join("inspect.json"));
    assert_eq!(report["modules"].as_array().unwrap().len(), 3);
    assert_fails(
        &modula(&["inspect", "--run", "dense"], tmp.path()),
        1,
        &["dense model", "no modules"],
    );
    for module in report["modules"].as_array().unwrap() {
        let classes = module["classes"].as_array().unwrap();
        assert!(
            classes.iter().any(|c| c["class"] == "sentence end <eos>"),
            "{module}"
        );
        assert_eq!(
            classes.len(),
            module["previous_classes"].as_array().unwrap().len()
        );
    }

    // EM with the per-step E-step on every window along the greedy path (the settings of
    // configs/ptb-em-greedy.toml): one epoch visits every training position, the perplexity
    // falls, and the epoch end logs all three evaluations.
    let step_cfg = tmp.path().join("step.toml");
    let text = fs::read_to_string(cfg).unwrap();
    // `[train]` is the file's last section, so these lines land in it.
    fs::write(
        &step_cfg,
        text + "e_every = 1\ne_search = \"step\"\ne_prior = 0.0\ne_capacity = 1.5\ne_path = \"greedy\"\n",
    )
    .unwrap();
    let step_cfg = step_cfg.to_str().unwrap();
    assert_ok(&modula(
        &[
            "train", "--config", step_cfg, "--epochs", "1", "--out", "step",
        ],
        tmp.path(),
    ));
    let step = tmp.path().join("step");
    let ppl = valid_ppls(&step);
    assert!(ppl.last().unwrap() < &(0.5 * ppl[0]), "{ppl:?}");
    let step_summary = json(&step.join("summary.json"));
    assert_eq!(step_summary["coverage"], 1.0, "{step_summary}");
    assert!(
        step_summary["ctrl_nll_slot"].as_f64().is_some(),
        "{step_summary}"
    );
    let end = fs::read_to_string(step.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .next_back()
        .unwrap();
    for key in [
        "test_ppl",
        "valid_ppl_mixture",
        "test_ppl_mixture",
        "valid_ppl_posterior",
        "test_ppl_posterior",
    ] {
        assert!(end[key].as_f64().is_some_and(|v| v > 1.0), "{key}: {end}");
    }
    assert_eq!(end["mixture_routes"], 3);
    // `modula eval` repeats the three figures of the summary.
    let out = modula(&["eval", "--run", "step", "--json"], tmp.path());
    assert_ok(&out);
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["test_ppl", "test_ppl_mixture", "test_ppl_posterior"] {
        assert_eq!(eval[key], step_summary[key], "{key}: {eval}");
    }

    let out = modula(
        &[
            "report",
            "em",
            "dense",
            "step",
            "--out",
            "report",
            "--json",
            "results.json",
        ],
        tmp.path(),
    );
    assert_ok(&out);
    let table = fs::read_to_string(tmp.path().join("report/report.md")).unwrap();
    assert!(
        table.contains("ptb-em-m3k1") && table.contains("ptb-dense-compute"),
        "{table}"
    );
    assert!(tmp.path().join("report/curves.png").is_file());
    let results = json(&tmp.path().join("results.json"));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["dense_match"], "compute");
    assert_eq!(results[2]["coverage"], 1.0);
    assert_eq!(
        results[2]["test_ppl_mixture"],
        step_summary["test_ppl_mixture"]
    );
    for key in [
        "algo",
        "m",
        "k",
        "seed",
        "epochs",
        "test_ppl",
        "valid_ppl",
        "parameters",
        "flops_per_token",
        "tokens_per_s",
        "effective_modules",
        "ctrl_nll",
    ] {
        assert!(
            results[2].get(key).is_some(),
            "{key} missing from {}",
            results[2]
        );
    }
}

#[test]
fn lm_configuration_errors_name_the_field_or_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let bad_k = write(
        "k.toml",
        "task_name = \"ptb\"\n[model]\nmodules = 2\nk = 3\n",
    );
    assert_fails(
        &modula(&["train", "--config", &bad_k], tmp.path()),
        1,
        &["model.k"],
    );
    let unknown = write("u.toml", "task_name = \"ptb\"\n[train]\nbptt_len = 3\n");
    assert_fails(
        &modula(&["train", "--config", &unknown], tmp.path()),
        1,
        &["bptt_len"],
    );
    let zero = write("z.toml", "task_name = \"ptb\"\n[train]\nbptt = 0\n");
    assert_fails(
        &modula(&["train", "--config", &zero], tmp.path()),
        1,
        &["train.bptt"],
    );
    let missing = write(
        "missing.toml",
        "task_name = \"ptb\"\ndata_dir = \"/nonexistent-modula-data\"\n",
    );
    assert_fails(
        &modula(&["train", "--config", &missing, "--out", "r"], tmp.path()),
        1,
        &["modula data fetch ptb"],
    );
    assert_fails(
        &modula(&["inspect", "--run", "nowhere"], tmp.path()),
        1,
        &["nowhere is not a run directory"],
    );
}

#[test]
fn a_text_corpus_trains_evaluates_and_inspects_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "the cat {} on the mat number {}\n",
                ["sat", "ran", "lay"][i % 3],
                i % 7
            )
        })
        .collect();
    fs::write(&corpus, lines).unwrap();
    let cfg = tmp.path().join("text.toml");
    fs::write(
        &cfg,
        format!(
            "task_name = \"text\"\nthreads = 1\n\n[task]\npath = {corpus:?}\n\n[model]\nembed = 8\nhidden = 8\nmodules = 2\n\n[train]\nepochs = 1\nbptt = 10\nbatch_size = 4\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    assert_ok(&modula(
        &["train", "--config", cfg, "--out", "text"],
        tmp.path(),
    ));
    let summary = json(&tmp.path().join("text/summary.json"));
    assert_eq!(
        (summary["task"].as_str(), summary["finished"].as_bool()),
        (Some("text"), Some(true))
    );
    let out = modula(&["eval", "--run", "text", "--json"], tmp.path());
    assert_ok(&out);
    let eval: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["test_ppl"], summary["test_ppl"]);
    assert_ok(&modula(
        &["inspect", "--run", "text", "--min-count", "1"],
        tmp.path(),
    ));
    // A corpus path that does not exist is named in the error.
    let missing = tmp.path().join("missing.toml");
    fs::write(
        &missing,
        "task_name = \"text\"\n[task]\npath = \"no-such-corpus.txt\"\n",
    )
    .unwrap();
    assert_fails(
        &modula(
            &["train", "--config", missing.to_str().unwrap(), "--out", "m"],
            tmp.path(),
        ),
        1,
        &["no-such-corpus.txt"],
    );
}
