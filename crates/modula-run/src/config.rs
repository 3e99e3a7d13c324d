//! The resolved configuration of a run, for every task: the fields all tasks share at the top
//! of `config.toml` (`task_name`, `seed`, `backend`, `threads`, `max_minutes`) and each task's
//! own sections, read from one file whose `task_name` picks the task.

use std::path::{Path, PathBuf};

use modula_data::toy::ToyConfig;
use modula_em::models::{ImageModelConfig, ImageNet, LmModelConfig, MlpConfig};
use modula_em::{Algo, DenseMatch};
use modula_tasks::{
    IMAGE_TASKS, ImageTaskConfig, ImageTrainConfig, LmTrainConfig, TextConfig, ToyTrainConfig,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{RunError, config_error};
use crate::files;

/// The backend a run computes on, as spelled on the command line and in `config.toml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CPU backend, with `threads` threads.
    #[default]
    Cpu,
    /// The WGSL compute backend on the best wgpu adapter found (a GPU, or a software adapter
    /// such as lavapipe); `MODULA_WGPU_ADAPTER` picks one by name.
    Wgpu,
}

/// Written by hand rather than derived so that an unknown value is reported with the key's
/// name; serde's derived message (`unknown variant`) names only the value.
impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "wgpu" => Ok(BackendKind::Wgpu),
            _ => Err(serde::de::Error::custom(format!(
                "`backend` is {name:?}; the backends are \"cpu\" and \"wgpu\""
            ))),
        }
    }
}

/// The fields that change only how a run executes, not what it trains, so `--resume` accepts
/// any change to them: the device, the bounds and the logging, evaluation and checkpoint
/// cadence (and the divergence guard, which only decides when to stop).
pub const EXECUTION_FIELDS: [&str; 9] = [
    "threads",
    "backend",
    "max_minutes",
    "train.steps",
    "train.epochs",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.divergence_factor",
];

/// A field whose value differs between two configurations.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// The dotted key, e.g. `train.lr`.
    pub field: String,
    /// Its value in the configuration compared (absent when it has no such field).
    pub this: Option<toml::Value>,
    /// Its value in the other one.
    pub other: Option<toml::Value>,
}

impl Difference {
    /// The record of an accepted change in `changes.jsonl`: the field and its values before
    /// (the checkpoint's) and after (`config.toml`'s); the caller sets the `step`.
    pub fn record(&self) -> serde_json::Value {
        let json = |v: &Option<toml::Value>| {
            v.as_ref()
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        serde_json::json!({
            "step": 0,
            "field": self.field,
            "from": json(&self.other),
            "to": json(&self.this),
        })
    }
}

/// The task names `task_name` accepts.
pub const TASKS: [&str; 6] = [
    "toy",
    "ptb",
    "text",
    "fashion-mnist",
    "mnist-10k",
    "cifar-10",
];

/// Everything that determines a toy run: defaults, then the `--config` file, then the flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyRun {
    /// `"toy"`.
    pub task_name: String,
    /// Seeds the task's data, the initialisation and every random choice of training.
    pub seed: u64,
    /// The backend; `--resume` and `modula eval` reuse it unless told otherwise.
    pub backend: BackendKind,
    /// CPU backend threads (the wgpu backend ignores them); 0 in a file means all cores (the
    /// resolved file holds the count, because results may depend on it).
    pub threads: usize,
    /// Stop (with a checkpoint, resumable) after this many minutes of wall time; 0: no limit.
    pub max_minutes: f64,
    /// The generated toy task.
    pub task: ToyConfig,
    /// The network.
    pub model: MlpConfig,
    /// The algorithm and its schedule.
    pub train: ToyTrainConfig,
}

impl Default for ToyRun {
    fn default() -> Self {
        ToyRun {
            task_name: "toy".to_string(),
            seed: 0,
            backend: BackendKind::Cpu,
            threads: 0,
            max_minutes: 0.0,
            task: ToyConfig::default(),
            model: MlpConfig::default(),
            train: ToyTrainConfig::default(),
        }
    }
}

/// Everything that determines a language-modelling run (`ptb` or `text`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmRun {
    /// `"ptb"` or `"text"`.
    pub task_name: String,
    /// Seeds the initialisation and every random choice of training.
    pub seed: u64,
    /// The backend.
    pub backend: BackendKind,
    /// CPU backend threads; 0 in a file means all cores.
    pub threads: usize,
    /// `ptb` only: where `ptb/ptb.{train,valid,test}.txt` are (default: `$MODULA_DATA` or
    /// `data`).
    pub data_dir: Option<PathBuf>,
    /// Stop (with a checkpoint, resumable) after this many minutes of wall time; 0: no limit.
    pub max_minutes: f64,
    /// `text` only: the corpus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TextConfig>,
    /// The network.
    pub model: LmModelConfig,
    /// The algorithm and its schedule.
    pub train: LmTrainConfig,
}

impl Default for LmRun {
    fn default() -> Self {
        LmRun {
            task_name: "ptb".to_string(),
            seed: 0,
            backend: BackendKind::Cpu,
            threads: 0,
            data_dir: None,
            max_minutes: 0.0,
            task: None,
            model: LmModelConfig::default(),
            train: LmTrainConfig::default(),
        }
    }
}

impl LmRun {
    /// A run name: task, algorithm, and `(M, K)` or the dense match.
    pub fn name(&self) -> String {
        let task = &self.task_name;
        match (self.train.algo, self.train.dense_match) {
            (Algo::Dense, DenseMatch::Compute) => format!("{task}-dense-compute"),
            (Algo::Dense, DenseMatch::Params) => {
                format!(
                    "{task}-dense-params-m{}k{}",
                    self.model.modules, self.model.k
                )
            }
            (algo, _) => format!(
                "{task}-{}-m{}k{}",
                algo.name(),
                self.model.modules,
                self.model.k
            ),
        }
    }
}

/// Everything that determines an image-classification run (`fashion-mnist`, `mnist-10k` or
/// `cifar-10`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageRun {
    /// `"fashion-mnist"`, `"mnist-10k"` or `"cifar-10"`.
    pub task_name: String,
    /// Seeds the initialisation, the batches' shuffles and every random choice of training.
    pub seed: u64,
    /// The backend.
    pub backend: BackendKind,
    /// CPU backend threads; 0 in a file means all cores.
    pub threads: usize,
    /// Stop (with a checkpoint, resumable) after this many minutes of wall time; 0: no limit.
    pub max_minutes: f64,
    /// Where the data is and how much of it is used.
    pub task: ImageTaskConfig,
    /// The network.
    pub model: ImageModelConfig,
    /// The algorithm and its schedule.
    pub train: ImageTrainConfig,
}

impl Default for ImageRun {
    fn default() -> Self {
        ImageRun {
            task_name: "fashion-mnist".to_string(),
            seed: 0,
            backend: BackendKind::Cpu,
            threads: 0,
            max_minutes: 0.0,
            task: ImageTaskConfig::default(),
            model: ImageModelConfig::default(),
            train: ImageTrainConfig::default(),
        }
    }
}

impl ImageRun {
    /// A run name: task, network, and the algorithm with `(M, K)` or the dense match (the
    /// ReLU network: its L1 strengths, when set).
    pub fn name(&self) -> String {
        let task = &self.task_name;
        let m = &self.model;
        match (m.kind, self.train.algo, self.train.dense_match) {
            (ImageNet::Mlp, _, _) => {
                let mut name = format!("{task}-mlp");
                if m.l1_activations > 0.0 {
                    name.push_str(&format!("-l1a{}", m.l1_activations));
                }
                if m.l1_weights > 0.0 {
                    name.push_str(&format!("-l1w{}", m.l1_weights));
                }
                if m.l1_groups > 0.0 {
                    name.push_str(&format!("-l1g{}", m.l1_groups));
                    if m.l1_group_size != 32 {
                        name.push_str(&format!("x{}", m.l1_group_size));
                    }
                }
                name
            }
            (ImageNet::Conv, Algo::Dense, DenseMatch::Compute) => {
                format!("{task}-conv-dense-compute")
            }
            (ImageNet::Conv, Algo::Dense, DenseMatch::Params) => {
                format!("{task}-conv-dense-params-m{}k{}", m.modules, m.k)
            }
            (ImageNet::Conv, algo, _) => {
                format!("{task}-conv-{}-m{}k{}", algo.name(), m.modules, m.k)
            }
            (ImageNet::Groups, algo, _) => {
                format!("{task}-groups-{}-m{}k{}", algo.name(), m.modules, m.k)
            }
        }
    }
}

/// The resolved configuration of any run.
#[derive(Clone, Debug, PartialEq)]
pub enum RunConfig {
    /// The toy task.
    Toy(ToyRun),
    /// Language modelling on Penn Treebank or a text corpus.
    Lm(LmRun),
    /// Image classification.
    Image(ImageRun),
}

/// What every task's configuration has, whatever the task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Common<'c> {
    /// The task's name.
    pub task_name: &'c str,
    /// The seed.
    pub seed: u64,
    /// The backend.
    pub backend: BackendKind,
    /// CPU threads.
    pub threads: usize,
    /// The wall-time limit in minutes (0: none).
    pub max_minutes: f64,
    /// The algorithm.
    pub algo: Algo,
}

/// Overrides from the command line; `None` keeps the configuration's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// The algorithm.
    pub algo: Option<Algo>,
    /// What a dense baseline is matched to.
    pub dense_match: Option<DenseMatch>,
    /// The seed.
    pub seed: Option<u64>,
    /// Iterations to train (in total).
    pub steps: Option<u64>,
    /// Epochs to train (in total).
    pub epochs: Option<u64>,
    /// The wall-time limit in minutes.
    pub max_minutes: Option<f64>,
    /// The backend.
    pub backend: Option<BackendKind>,
    /// CPU threads.
    pub threads: Option<usize>,
}

impl RunConfig {
    /// The default configuration of `task` (one of [`TASKS`]).
    ///
    /// # Errors
    /// A run error naming the known tasks.
    pub fn default_for(task: &str) -> Result<Self, RunError> {
        match task {
            "toy" => Ok(RunConfig::Toy(ToyRun::default())),
            "ptb" | "text" => Ok(RunConfig::Lm(LmRun {
                task_name: task.to_string(),
                task: (task == "text").then(TextConfig::default),
                ..LmRun::default()
            })),
            _ if IMAGE_TASKS.contains(&task) => Ok(RunConfig::Image(ImageRun {
                task_name: task.to_string(),
                ..ImageRun::default()
            })),
            _ => Err(unknown_task(task)),
        }
    }

    /// Reads a TOML file: its `task_name` (default `"toy"`) picks the task, whose sections are
    /// then parsed with unknown keys rejected by name and line.
    ///
    /// # Errors
    /// A run error naming the file when it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Self, RunError> {
        let cannot =
            |e: String| config_error(format!("cannot read config {}: {e}", path.display()));
        let bytes =
            files::read_limited(path, files::CONFIG_LIMIT).map_err(|e| cannot(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| cannot("it is not UTF-8 text".into()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a configuration; `origin` names it in errors (a file, or a
    /// checkpoint's metadata).
    ///
    /// # Errors
    /// A run error naming `origin` when the text cannot be parsed.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RunError> {
        let path = Path::new(origin);
        let invalid =
            |e: toml::de::Error| config_error(format!("config {} is invalid: {e}", path.display()));
        let table: toml::Table = toml::from_str(text).map_err(invalid)?;
        let task = match table.get("task_name") {
            None => "toy",
            Some(toml::Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(config_error(format!(
                    "config {} is invalid: `task_name` is {v}; use one of {TASKS:?}",
                    path.display()
                )));
            }
        };
        match task {
            "toy" => Ok(RunConfig::Toy(toml::from_str(text).map_err(invalid)?)),
            "ptb" | "text" => {
                let mut run: LmRun = toml::from_str(text).map_err(invalid)?;
                if task == "text" && run.task.is_none() {
                    run.task = Some(TextConfig::default());
                }
                Ok(RunConfig::Lm(run))
            }
            _ if IMAGE_TASKS.contains(&task) => {
                Ok(RunConfig::Image(toml::from_str(text).map_err(invalid)?))
            }
            other => Err(config_error(format!(
                "config {}: {}",
                path.display(),
                unknown_task(other)
            ))),
        }
    }

    /// The fields every task has.
    pub fn common(&self) -> Common<'_> {
        match self {
            RunConfig::Toy(c) => Common {
                task_name: &c.task_name,
                seed: c.seed,
                backend: c.backend,
                threads: c.threads,
                max_minutes: c.max_minutes,
                algo: c.train.algo,
            },
            RunConfig::Lm(c) => Common {
                task_name: &c.task_name,
                seed: c.seed,
                backend: c.backend,
                threads: c.threads,
                max_minutes: c.max_minutes,
                algo: c.train.algo,
            },
            RunConfig::Image(c) => Common {
                task_name: &c.task_name,
                seed: c.seed,
                backend: c.backend,
                threads: c.threads,
                max_minutes: c.max_minutes,
                algo: c.train.algo,
            },
        }
    }

    /// The run's name for default directories: the algorithm for toy runs, the task,
    /// network, algorithm and modular shape for language models and image runs.
    pub fn name(&self) -> String {
        match self {
            RunConfig::Toy(c) => c.train.algo.name().to_string(),
            RunConfig::Lm(c) => c.name(),
            RunConfig::Image(c) => c.name(),
        }
    }

    /// Applies `o`. With `resuming`, only the bounds and the device may change (the rest
    /// determines the run's results).
    pub fn apply(&mut self, o: &Overrides, resuming: bool) {
        macro_rules! common {
            ($c:expr) => {{
                if !resuming {
                    if let Some(a) = o.algo {
                        $c.train.algo = a;
                    }
                    if let Some(m) = o.dense_match {
                        $c.train.dense_match = m;
                    }
                    if let Some(s) = o.seed {
                        $c.seed = s;
                    }
                }
                if let Some(m) = o.max_minutes {
                    $c.max_minutes = m;
                }
                if let Some(b) = o.backend {
                    $c.backend = b;
                }
                if let Some(t) = o.threads {
                    $c.threads = t;
                }
            }};
        }
        match self {
            RunConfig::Toy(c) => {
                common!(c);
                if let Some(s) = o.steps {
                    c.train.steps = s as usize;
                }
                if let Some(e) = o.epochs {
                    // A toy epoch is every whole batch of the training split once.
                    let batch = c.train.batch_size.min(c.task.train).max(1);
                    let per_epoch = (c.task.train / batch).max(1);
                    c.train.steps = e as usize * per_epoch;
                }
            }
            RunConfig::Lm(c) => {
                common!(c);
                if let Some(s) = o.steps {
                    c.train.steps = s as usize;
                }
                if let Some(e) = o.epochs {
                    c.train.epochs = e as usize;
                }
            }
            RunConfig::Image(c) => {
                common!(c);
                if let Some(s) = o.steps {
                    c.train.steps = s as usize;
                }
                if let Some(e) = o.epochs {
                    c.train.epochs = e as usize;
                }
            }
        }
    }

    /// Sets `threads = 0` ("all cores") to `cores`, so that the resolved file names the count,
    /// and lowers a count above `cores` to it (more threads than cores only contend, and a
    /// large count would fail to start its threads), returning a note saying so.
    pub fn fit_threads(&mut self, cores: usize) -> Option<String> {
        let threads = match self {
            RunConfig::Toy(c) => &mut c.threads,
            RunConfig::Lm(c) => &mut c.threads,
            RunConfig::Image(c) => &mut c.threads,
        };
        if *threads == 0 {
            *threads = cores;
        }
        (*threads > cores).then(|| {
            let note = format!(
                "`threads` is {}, but this machine runs {cores} threads at once; using {cores} (results may differ from the run's own in the last bits)",
                *threads
            );
            *threads = cores;
            note
        })
    }

    /// The fields of the configuration that define what is trained, in which it differs from
    /// `other`: everything except [`EXECUTION_FIELDS`].
    pub fn training_differences(&self, other: &RunConfig) -> Vec<Difference> {
        let (mine, theirs) = (self.flat(), other.flat());
        let mut keys: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !EXECUTION_FIELDS.contains(&k.as_str()))
            .filter(|k| mine.get(*k) != theirs.get(*k))
            .map(|k| Difference {
                field: k.clone(),
                this: mine.get(k).cloned(),
                other: theirs.get(k).cloned(),
            })
            .collect()
    }

    /// Every field as a dotted key (`train.lr`) and its value.
    fn flat(&self) -> std::collections::BTreeMap<String, toml::Value> {
        fn walk(
            prefix: &str,
            table: &toml::Table,
            out: &mut std::collections::BTreeMap<String, toml::Value>,
        ) {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    toml::Value::Table(t) => walk(&key, t, out),
                    v => {
                        out.insert(key, v.clone());
                    }
                }
            }
        }
        let table: toml::Table =
            toml::from_str(&self.to_toml()).expect("the resolved configuration reads back");
        let mut out = std::collections::BTreeMap::new();
        walk("", &table, &mut out);
        out
    }

    /// Checks every section, naming the first bad field.
    ///
    /// # Errors
    /// A run error quoting the library's [`modula_em::ConfigError`].
    pub fn validate(&self) -> Result<(), RunError> {
        let common = self.common();
        let (modules, checked) = match self {
            RunConfig::Toy(c) => (
                c.model.modules,
                modula_tasks::toy::validate_task(&c.task)
                    .and_then(|()| c.model.validate())
                    .and_then(|()| c.train.validate()),
            ),
            RunConfig::Lm(c) => (
                c.model.modules,
                c.task
                    .as_ref()
                    .map_or(Ok(()), TextConfig::validate)
                    .and_then(|()| c.model.validate())
                    .and_then(|()| c.train.validate()),
            ),
            RunConfig::Image(c) => (
                c.model.modules,
                c.task
                    .validate()
                    .and_then(|()| c.model.validate(c.train.algo))
                    .and_then(|()| c.train.validate()),
            ),
        };
        checked.map_err(|e| config_error(e.to_string()))?;
        if let RunConfig::Lm(c) = self {
            let upcycled = !c.train.init_from.as_os_str().is_empty();
            let modular = matches!(c.train.algo, Algo::Em | Algo::Reinforce | Algo::Uniform);
            if upcycled && !(modular && c.model.k == 1) {
                return Err(config_error(format!(
                    "invalid configuration: `train.init_from` upcycles a dense GRU into a controller-routed modular one with K = 1 (em, reinforce or uniform), not {} with K = {}; remove it or change train.algo and model.k",
                    c.train.algo.name(),
                    c.model.k
                )));
            }
        }
        // Noisy top-k picks at least two modules, so it cannot run on a pool of one.
        if common.algo == Algo::Topk && modules < 2 {
            return Err(config_error(format!(
                "invalid configuration: `model.modules` is {modules}; noisy top-k (train.algo = \"topk\") needs at least 2 modules"
            )));
        }
        if !(common.max_minutes >= 0.0 && common.max_minutes.is_finite()) {
            return Err(config_error(format!(
                "invalid configuration: `max_minutes` is {}; use 0 (no limit) or a positive number",
                common.max_minutes
            )));
        }
        Ok(())
    }

    /// The configuration as TOML, in the order of the fields. The `toml` crate writes each
    /// `f32` in its shortest decimal form (`0.01`, not `0.009999999776482582`), which reads
    /// back as the same `f32`, so the file reproduces the run exactly.
    pub fn to_toml(&self) -> String {
        match self {
            RunConfig::Toy(c) => toml::to_string(c),
            RunConfig::Lm(c) => toml::to_string(c),
            RunConfig::Image(c) => toml::to_string(c),
        }
        .expect("the configuration serialises")
    }
}

fn unknown_task(task: &str) -> RunError {
    config_error(format!(
        "invalid configuration: `task_name` is {task:?}; the tasks are {}",
        TASKS.map(|t| format!("\"{t}\"")).join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolved_config_reads_back_equal_with_short_floats() {
        let mut cfg = ToyRun::default();
        cfg.train.lr = 0.003;
        cfg.model.variance = 1e-7;
        let text = RunConfig::Toy(cfg.clone()).to_toml();
        assert!(text.contains("lr = 0.003\n"), "{text}");
        assert!(text.find("[task]") < text.find("[model]"), "{text}");
        let back: ToyRun = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }
}
