//! `modula continual`: runs a continual-learning experiment (every method of its
//! configuration, for every seed) into a directory, one result file per method and seed, and
//! reports it (tables, `results.json`, the accuracy-matrix heat maps and the module-usage
//! figure).
//!
//! The directory holds `config.toml` (the resolved configuration; a later run into the same
//! directory must resolve to the same one, or extend it by seeds and methods) and
//! `METHOD-sSEED.json` per finished method and
//! seed, each written atomically once that method's sequence (and its from-scratch runs) has
//! finished. A stopped experiment is resumed by running the same command again: finished
//! files are kept and only the missing ones run. A method's sequence is not checkpointed
//! inside: a stop loses at most the one being trained.

use std::fs;
use std::path::Path;
use std::time::Instant;

use modula_sparse::SparseBackend;
pub use modula_tasks::continual::ContinualConfig;
use modula_tasks::continual::{
    MethodConfig, Replay, SequenceRun, Summary, load_sequence, overlap, run_sequence, summarise,
};
use serde::{Deserialize, Serialize};

use crate::error::{RunError, config_error, run_error};
use crate::files::replace;

/// The resolved configuration's file in an experiment's directory.
pub const CONFIG_FILE: &str = "config.toml";

/// One method's result for one seed: what `METHOD-sSEED.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// The method's name.
    pub method: String,
    /// The seed.
    pub seed: u64,
    /// The tasks' names, in training order.
    pub tasks: Vec<String>,
    /// The sequence's accuracy matrix, usage and size.
    pub run: SequenceRun,
    /// Per task, the test accuracy of the method trained from scratch on that task alone
    /// (empty when `train.scratch` is off), with the shared head.
    pub scratch: Vec<f64>,
    /// The same with a per-task head.
    pub scratch_task: Vec<f64>,
    /// Floating-point operations of one example's forward pass through the modules it
    /// evaluates.
    pub flops_per_example: u64,
    /// Wall-clock seconds of the sequence and its from-scratch runs.
    pub seconds: f64,
}

/// How a task's test accuracy reads the ten outputs every task shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// The argmax over all outputs (class-incremental for split Fashion-MNIST).
    Shared,
    /// The argmax over the task's own classes (task-incremental).
    PerTask,
}

impl MethodResult {
    /// The accuracy matrix's summaries under `head`.
    pub fn summary(&self, head: Head) -> Summary {
        let (r, scratch) = match head {
            Head::Shared => (&self.run.accuracy, &self.scratch),
            Head::PerTask => (&self.run.task_accuracy, &self.scratch_task),
        };
        summarise(r, (!scratch.is_empty()).then_some(&scratch[..]))
    }

    /// Per modular layer, the mean overlap of the module usage of every pair of tasks (none
    /// for a dense network or a single task).
    pub fn mean_overlap(&self) -> Vec<f64> {
        let usage = &self.run.usage;
        let layers = usage.first().map_or(0, Vec::len);
        (0..layers)
            .filter(|&l| usage[0][l].len() > 1)
            .map(|l| {
                let mut sum = (0.0, 0usize);
                for i in 0..usage.len() {
                    for j in i + 1..usage.len() {
                        sum.0 += overlap(&usage[i][l], &usage[j][l]);
                        sum.1 += 1;
                    }
                }
                sum.0 / sum.1.max(1) as f64
            })
            .collect()
    }
}

/// The result file of `method` and `seed` in `dir`.
fn result_path(dir: &Path, method: &str, seed: u64) -> std::path::PathBuf {
    dir.join(format!("{method}-s{seed}.json"))
}

/// Reads and validates a continual experiment's configuration file.
///
/// # Errors
/// A configuration error naming the file, or the field and what to change.
pub fn read_config(path: &Path) -> Result<ContinualConfig, RunError> {
    let text = fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    let cfg: ContinualConfig =
        toml::from_str(&text).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    cfg.validate()
        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// Whether `new` only extends `old`: the same sequence and budget, every seed and method of
/// `old` still there (a method unchanged), perhaps more of them.
fn extends(old: &ContinualConfig, new: &ContinualConfig) -> bool {
    old.sequence == new.sequence
        && old.train == new.train
        && old.seeds.iter().all(|s| new.seeds.contains(s))
        && old.methods.iter().all(|m| new.methods.contains(m))
}

/// Records `cfg` in `dir` (created if needed), or checks that it extends the configuration
/// already there (results in the directory stay valid) and records it in its place.
fn record_config(dir: &Path, cfg: &ContinualConfig) -> Result<(), RunError> {
    fs::create_dir_all(dir)
        .map_err(|e| run_error(format!("cannot create {}: {e}", dir.display())))?;
    let text = toml::to_string(cfg).map_err(|e| run_error(e.to_string()))?;
    let path = dir.join(CONFIG_FILE);
    if let Ok(old) = fs::read_to_string(&path) {
        let old: ContinualConfig =
            toml::from_str(&old).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
        if !extends(&old, cfg) {
            return Err(config_error(format!(
                "{} holds a configuration this run's does not extend (a run may only add seeds and methods); continue it with the same configuration, or choose another --out",
                path.display()
            )));
        }
    }
    replace(&path, "continual-config", text.as_bytes())
}

/// Runs every method of `cfg` (only those named in `only`, when not empty) for every seed
/// into `dir`, skipping those whose result file exists; prints one line per finished method
/// and seed on stderr.
///
/// # Errors
/// A configuration or data error, a diverged run, or a failed write.
pub fn run<B: SparseBackend>(
    backend: B,
    cfg: &ContinualConfig,
    dir: &Path,
    only: &[String],
) -> Result<(), RunError> {
    if let Some(bad) = only
        .iter()
        .find(|n| !cfg.methods.iter().any(|m| &m.name == *n))
    {
        return Err(config_error(format!(
            "--method {bad:?} is not a method of the configuration (it has {:?})",
            cfg.methods.iter().map(|m| &m.name).collect::<Vec<_>>()
        )));
    }
    record_config(dir, cfg)?;
    for &seed in &cfg.seeds {
        let todo: Vec<&MethodConfig> = cfg
            .methods
            .iter()
            .filter(|m| only.is_empty() || only.contains(&m.name))
            .filter(|m| !result_path(dir, &m.name, seed).exists())
            .collect();
        if todo.is_empty() {
            continue;
        }
        let tasks = load_sequence(&cfg.sequence, seed).map_err(RunError::Data)?;
        for method in todo {
            let t0 = Instant::now();
            let run = run_sequence(backend.clone(), tasks.clone(), cfg, method, seed, |_, _| {})
                .map_err(|e| run_error(format!("method {:?}, seed {seed}: {e}", method.name)))?;
            let (mut scratch, mut scratch_task) = (Vec::new(), Vec::new());
            if cfg.train.scratch {
                // Alone on one task, replay and EWC have nothing to keep.
                let alone = MethodConfig {
                    replay: Replay::None,
                    ewc: false,
                    ..method.clone()
                };
                for t in &tasks {
                    let r = run_sequence(
                        backend.clone(),
                        vec![t.clone()],
                        cfg,
                        &alone,
                        seed,
                        |_, _| {},
                    )
                    .map_err(|e| {
                        run_error(format!(
                            "method {:?} from scratch, seed {seed}: {e}",
                            method.name
                        ))
                    })?;
                    scratch.push(r.accuracy[0][0]);
                    scratch_task.push(r.task_accuracy[0][0]);
                }
            }
            let (d_in, d_out) = (tasks[0].train.image_bytes(), tasks[0].train.classes);
            let result = MethodResult {
                method: method.name.clone(),
                seed,
                tasks: tasks.iter().map(|t| t.name.clone()).collect(),
                run,
                scratch,
                scratch_task,
                flops_per_example: method.flops_per_example(d_in, d_out),
                seconds: t0.elapsed().as_secs_f64(),
            };
            let s = result.summary(Head::Shared);
            eprintln!(
                "{} seed {seed}: average accuracy {:.4}, backward transfer {:+.4}, {:.0} s",
                method.name, s.average_accuracy, s.backward_transfer, result.seconds
            );
            let json = serde_json::to_vec_pretty(&result).map_err(|e| run_error(e.to_string()))?;
            replace(
                &result_path(dir, &method.name, seed),
                "continual-result",
                &json,
            )?;
        }
    }
    Ok(())
}

/// The mean and the spread (half the range, max minus min over 2) of some seeds' values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The mean.
    pub mean: f64,
    /// Half the range.
    pub spread: f64,
}

impl Spread {
    /// Of `values` (none for an empty list).
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        Some(Spread {
            mean,
            spread: (hi - lo) / 2.0,
        })
    }
}

/// A method's summaries over the seeds under one head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadRow {
    /// Average accuracy after the last task.
    pub average_accuracy: Option<Spread>,
    /// Backward transfer.
    pub backward_transfer: Option<Spread>,
    /// Forward transfer against from-scratch training.
    pub forward_transfer: Option<Spread>,
}

impl HeadRow {
    /// The summaries of `results` under `head`.
    fn of(results: &[&MethodResult], head: Head) -> HeadRow {
        let sums: Vec<Summary> = results.iter().map(|r| r.summary(head)).collect();
        let pick = |f: &dyn Fn(&Summary) -> Option<f64>| {
            Spread::of(&sums.iter().filter_map(f).collect::<Vec<_>>())
        };
        HeadRow {
            average_accuracy: pick(&|s| Some(s.average_accuracy)),
            backward_transfer: pick(&|s| Some(s.backward_transfer)),
            forward_transfer: pick(&|s| s.forward_transfer),
        }
    }
}

/// One method's row of the report: its summaries over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    /// The method's name.
    pub method: String,
    /// The algorithm's name.
    pub algo: String,
    /// The seeds with results.
    pub seeds: Vec<u64>,
    /// Trainable scalars.
    pub parameters: usize,
    /// Forward FLOPs per example through the evaluated modules.
    pub flops_per_example: u64,
    /// The summaries with the shared head.
    pub shared: HeadRow,
    /// The summaries with a per-task head.
    pub per_task: HeadRow,
    /// Per modular layer, the mean pairwise overlap of the tasks' module usage.
    pub overlap: Vec<Option<Spread>>,
    /// Each seed's accuracy matrix with the shared head, in `seeds` order.
    pub accuracy: Vec<Vec<Vec<f64>>>,
    /// Each seed's accuracy matrix with the per-task head, in `seeds` order.
    pub task_accuracy: Vec<Vec<Vec<f64>>>,
}

/// The report of an experiment: an entry of `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContinualReport {
    /// The experiment's name: its directory's.
    pub name: String,
    /// The resolved configuration.
    pub config: ContinualConfig,
    /// The tasks' names.
    pub tasks: Vec<String>,
    /// One row per method with results, in the configuration's order.
    pub methods: Vec<MethodRow>,
}

/// Reads every result file of the experiment in `dir`.
///
/// # Errors
/// A message naming the file that cannot be read or parsed, or the directory without a
/// configuration.
pub fn load(dir: &Path) -> Result<(ContinualConfig, Vec<MethodResult>), RunError> {
    let cfg = read_config(&dir.join(CONFIG_FILE))?;
    let mut results = Vec::new();
    for m in &cfg.methods {
        for &seed in &cfg.seeds {
            let path = result_path(dir, &m.name, seed);
            if !path.exists() {
                continue;
            }
            let text = fs::read_to_string(&path)
                .map_err(|e| run_error(format!("cannot read {}: {e}", path.display())))?;
            let r: MethodResult = serde_json::from_str(&text).map_err(|e| {
                run_error(format!(
                    "{} is not a continual result ({e}); delete it to run that method again",
                    path.display()
                ))
            })?;
            results.push(r);
        }
    }
    Ok((cfg, results))
}

/// Summarises the results of `dir` per method.
///
/// # Errors
/// As [`load`], and a message when no result is there yet.
pub fn report(dir: &Path) -> Result<ContinualReport, RunError> {
    let (cfg, results) = load(dir)?;
    if results.is_empty() {
        return Err(run_error(format!(
            "{} has no results yet; run `modula continual run` first",
            dir.display()
        )));
    }
    let tasks = results[0].tasks.clone();
    let methods = cfg
        .methods
        .iter()
        .filter_map(|m| {
            let rs: Vec<&MethodResult> = results.iter().filter(|r| r.method == m.name).collect();
            let first = rs.first()?;
            let overlaps: Vec<Vec<f64>> = rs.iter().map(|r| r.mean_overlap()).collect();
            let layers = overlaps.first().map_or(0, Vec::len);
            Some(MethodRow {
                method: m.name.clone(),
                algo: m.algo.name().to_string(),
                seeds: rs.iter().map(|r| r.seed).collect(),
                parameters: first.run.parameters,
                flops_per_example: first.flops_per_example,
                shared: HeadRow::of(&rs, Head::Shared),
                per_task: HeadRow::of(&rs, Head::PerTask),
                overlap: (0..layers)
                    .map(|l| Spread::of(&overlaps.iter().map(|o| o[l]).collect::<Vec<_>>()))
                    .collect(),
                accuracy: rs.iter().map(|r| r.run.accuracy.clone()).collect(),
                task_accuracy: rs.iter().map(|r| r.run.task_accuracy.clone()).collect(),
            })
        })
        .collect();
    Ok(ContinualReport {
        name: dir
            .file_name()
            .map_or_else(|| "experiment".into(), |n| n.to_string_lossy().into_owned()),
        config: cfg,
        tasks,
        methods,
    })
}

/// `mean ± spread` with `digits` decimals, or `n/a`.
fn cell(s: Option<Spread>, digits: usize) -> String {
    s.map_or("n/a".into(), |s| {
        format!("{:.digits$} ± {:.digits$}", s.mean, s.spread)
    })
}

/// The report's table in Markdown under `head`: one row per method.
pub fn table(report: &ContinualReport, head: Head) -> String {
    let mut out = String::from(
        "| method | algorithm | seeds | parameters | forward MFLOPs / example | average accuracy | backward transfer | forward transfer | module overlap (per layer) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in &report.methods {
        let h = match head {
            Head::Shared => &m.shared,
            Head::PerTask => &m.per_task,
        };
        let overlap = if m.overlap.is_empty() {
            "n/a".to_string()
        } else {
            m.overlap
                .iter()
                .map(|&o| cell(o, 2))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out += &format!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |\n",
            m.method,
            m.algo,
            m.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            m.parameters,
            m.flops_per_example as f64 / 1e6,
            cell(h.average_accuracy, 4),
            cell(h.backward_transfer, 4),
            cell(h.forward_transfer, 4),
            overlap
        );
    }
    out
}

/// Writes the reports of several experiments (each with its directory) as one JSON object,
/// `{"experiments": [...]}`, to `json`, and, with plots, each experiment's figures into
/// `figures/NAME/`: `accuracy.png`/`.svg`, the accuracy matrices of the first seed of every
/// method, and `usage.png`/`.svg`, each modular method's first-layer module usage per task.
/// Returns the files written.
///
/// # Errors
/// A failed write or drawing.
pub fn write(
    reports: &[(ContinualReport, &Path)],
    json: Option<&Path>,
    figures: Option<&Path>,
) -> Result<Vec<String>, RunError> {
    let mut written = Vec::new();
    if let Some(json) = json {
        let all = serde_json::json!({
            "experiments": reports.iter().map(|(r, _)| r).collect::<Vec<_>>()
        });
        let bytes = serde_json::to_vec_pretty(&all).map_err(|e| run_error(e.to_string()))?;
        replace(json, "continual-report", &bytes)?;
        written.push(json.display().to_string());
    }
    #[cfg(feature = "plots")]
    if let Some(figures) = figures {
        for (report, dir) in reports {
            let figs = figures.join(&report.name);
            fs::create_dir_all(&figs)
                .map_err(|e| run_error(format!("cannot create {}: {e}", figs.display())))?;
            let (_, results) = load(dir)?;
            // Each method's first seed.
            let runs: Vec<(String, &SequenceRun)> = report
                .methods
                .iter()
                .filter_map(|m| {
                    results
                        .iter()
                        .find(|r| r.method == m.method && Some(&r.seed) == m.seeds.first())
                        .map(|r| (format!("{} (seed {})", r.method, r.seed), &r.run))
                })
                .collect();
            let files =
                crate::plot::continual::figures(&figs, &report.tasks, &runs).map_err(run_error)?;
            written.extend(
                files
                    .into_iter()
                    .map(|f| figs.join(f).display().to_string()),
            );
        }
    }
    #[cfg(not(feature = "plots"))]
    let _ = figures;
    Ok(written)
}
