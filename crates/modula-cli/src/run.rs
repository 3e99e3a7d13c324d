//! What `modula train` and `modula eval` share: the run configuration, the run directory's
//! files, checkpoints with the CLI's metadata, and the error type with its exit codes.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use modula_em::toy::ToyConfig;
use modula_em::{Algo, ModelConfig, ToyEval, ToyExperiment, TrainConfig, TrainError};
use modula_nn::Checkpoint;
use modula_tensor::{Backend, Cpu};
use modula_wgpu::Wgpu;
use serde::{Deserialize, Deserializer, Serialize};

/// The resolved configuration of a run, as written to the run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// One JSON object per logging interval.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The latest checkpoint (written atomically).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The final figures of a finished run.
pub const SUMMARY_FILE: &str = "summary.json";

/// Checkpoint metadata keys the CLI adds to the trainer's own.
pub const META_CONFIG: &str = "modula.config";
/// Metadata key of the partly accumulated logging interval (see `train::Interval`).
pub const META_INTERVAL: &str = "modula.interval";
/// Metadata key of the training seconds spent up to the checkpoint.
pub const META_SECONDS: &str = "modula.seconds";

/// The only task the CLI trains today.
pub const TOY_TASK: &str = "toy";

/// Why a command failed: a bad configuration or run directory, an unreadable checkpoint, a
/// diverged loss or a failed write. It exits with status 1; usage errors never get here,
/// because clap reports them itself and exits with status 2.
#[derive(Debug)]
pub struct CliError(pub String);

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(1)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shorthand for a run error built from anything printable.
pub fn run_error(message: impl Into<String>) -> CliError {
    CliError(message.into())
}

/// Prints a failed command's error on stderr and turns the result into an exit status.
pub fn finish(command: &str, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("modula {command}: error: {error}");
            error.exit_code()
        }
    }
}

/// The backend a run computes on, as spelled on the command line and in `config.toml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CPU backend of `modula-tensor`, with `threads` threads.
    #[default]
    Cpu,
    /// The WGSL compute backend of `modula-wgpu` on the best wgpu adapter found (a GPU, or a
    /// software adapter such as lavapipe); `MODULA_WGPU_ADAPTER` picks one by name.
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

/// Everything that determines a run: defaults, then the `--config` file, then the flags.
/// Written to `config.toml` in the run directory, from which the run can be repeated alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The task; only `"toy"` exists today.
    pub task_name: String,
    /// Seeds the task's data, the initialisation and every random choice of training.
    pub seed: u64,
    /// The backend; `--resume` and `modula eval` reuse it unless told otherwise.
    pub backend: BackendKind,
    /// CPU backend threads (the wgpu backend ignores them); 0 in a file means all cores (the
    /// resolved file holds the count, because results may depend on it).
    pub threads: usize,
    /// The generated toy task.
    pub task: ToyConfig,
    /// The network.
    pub model: ModelConfig,
    /// The algorithm and its schedule.
    pub train: TrainConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            task_name: TOY_TASK.to_string(),
            seed: 0,
            backend: BackendKind::Cpu,
            threads: 0,
            task: ToyConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

impl RunConfig {
    /// Reads a TOML file; unknown keys are rejected with their name and line.
    ///
    /// # Errors
    /// A run error naming the file when it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Self, CliError> {
        let text = fs::read_to_string(path)
            .map_err(|e| run_error(format!("cannot read config {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| run_error(format!("config {} is invalid: {e}", path.display())))
    }

    /// Checks every section, naming the first bad field.
    ///
    /// # Errors
    /// A run error quoting the library's [`modula_em::ConfigError`].
    pub fn validate(&self) -> Result<(), CliError> {
        if self.task_name != TOY_TASK {
            return Err(run_error(format!(
                "invalid configuration: `task_name` is {:?}; the only task is \"{TOY_TASK}\"",
                self.task_name
            )));
        }
        self.task
            .validate()
            .and_then(|()| self.model.validate())
            .and_then(|()| self.train.validate())
            .map_err(|e| run_error(e.to_string()))?;
        // Noisy top-k picks at least two modules, so it cannot run on a pool of one.
        if self.train.algo == Algo::Topk && self.model.modules < 2 {
            return Err(run_error(format!(
                "invalid configuration: `model.modules` is {}; noisy top-k (train.algo = \"topk\") needs at least 2 modules",
                self.model.modules
            )));
        }
        Ok(())
    }

    /// The configuration as TOML, in the order of the fields. The `toml` crate writes each
    /// `f32` in its shortest decimal form (`0.01`, not `0.009999999776482582`), which reads
    /// back as the same `f32`, so the file reproduces the run exactly.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serialises")
    }

    /// Builds the experiment on `backend`. The configuration must be valid.
    pub fn build<B: Backend>(&self, backend: B) -> ToyExperiment<B> {
        ToyExperiment::new(backend, &self.task, &self.model, &self.train, self.seed)
    }
}

/// The device a command runs on, as `summary.json` and `modula eval --json` record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The backend.
    pub backend: BackendKind,
    /// The wgpu adapter's name (absent on the CPU backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The wgpu adapter's device type: `discrete_gpu`, `integrated_gpu`, `virtual_gpu`,
    /// `other`, or `cpu` for a software adapter, whose timings are CPU figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_type: Option<String>,
}

impl DeviceInfo {
    /// A few words for progress lines: the thread count, or the adapter.
    pub fn describe(&self, threads: usize) -> String {
        match (&self.backend, &self.adapter) {
            (BackendKind::Wgpu, Some(adapter)) => format!(
                "wgpu on {adapter} ({})",
                self.adapter_type.as_deref().unwrap_or("unknown type")
            ),
            _ => format!("cpu, {threads} threads"),
        }
    }
}

/// A command body written once, generic over the backend; [`on_backend`] runs it on the
/// backend a configuration names, so each command has a single code path monomorphised for
/// [`Cpu`] and [`Wgpu`].
pub trait OnBackend {
    /// Runs the command on `backend`, which `device` describes.
    ///
    /// # Errors
    /// The command's own errors.
    fn run<B: Backend>(self, backend: B, device: DeviceInfo) -> Result<(), CliError>;
}

/// Opens the backend `kind` names (the CPU with `threads` threads, or the best wgpu adapter)
/// and runs `job` on it.
///
/// # Errors
/// A run error when `--backend wgpu` finds no usable adapter, and `job`'s own errors.
pub fn on_backend(kind: BackendKind, threads: usize, job: impl OnBackend) -> Result<(), CliError> {
    match kind {
        BackendKind::Cpu => job.run(
            Cpu::with_threads(threads),
            DeviceInfo {
                backend: BackendKind::Cpu,
                adapter: None,
                adapter_type: None,
            },
        ),
        BackendKind::Wgpu => {
            let gpu = open_wgpu()?;
            let adapter = gpu.adapter();
            let device = DeviceInfo {
                backend: BackendKind::Wgpu,
                adapter: Some(adapter.name.clone()),
                adapter_type: Some(adapter.device_type.as_str().to_string()),
            };
            job.run(gpu, device)
        }
    }
}

/// Opens the wgpu backend, turning a missing adapter into an error that says what to install.
fn open_wgpu() -> Result<Wgpu, CliError> {
    Wgpu::new().map_err(|e| {
        let filter = std::env::var("MODULA_WGPU_ADAPTER")
            .map(|name| {
                format!(
                    " MODULA_WGPU_ADAPTER={name:?} is set: unset it or name an adapter that exists."
                )
            })
            .unwrap_or_default();
        run_error(format!(
            "--backend wgpu: {e}.{filter} Install a Vulkan, Metal or DX12 driver: on Debian, \
             `apt-get install mesa-vulkan-drivers libvulkan1` provides the lavapipe software \
             adapter (slow; a GPU's own driver is the fast path). Or use --backend cpu"
        ))
    })
}

/// The number of cores, the default thread count.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reads the resolved configuration of an existing run directory.
///
/// # Errors
/// A run error when the directory holds no run or its configuration is unusable.
pub fn read_run_config(dir: &Path) -> Result<RunConfig, CliError> {
    let path = dir.join(CONFIG_FILE);
    if !dir.is_dir() {
        return Err(run_error(format!(
            "{} is not a run directory: it does not exist",
            dir.display()
        )));
    }
    if !path.is_file() {
        return Err(run_error(format!(
            "{} holds no run: there is no {CONFIG_FILE} (start a run with `modula train --out {}`)",
            dir.display(),
            dir.display()
        )));
    }
    let cfg = RunConfig::read(&path)?;
    cfg.validate()?;
    if cfg.threads == 0 {
        return Err(run_error(format!(
            "{}: `threads` is 0; a run's resolved configuration names its thread count",
            path.display()
        )));
    }
    Ok(cfg)
}

/// Reads `dir/checkpoint.safetensors`.
///
/// # Errors
/// A run error when the checkpoint is missing, truncated or corrupt.
pub fn read_checkpoint(dir: &Path) -> Result<Checkpoint, CliError> {
    let path = checkpoint_path(dir);
    if !path.is_file() {
        return Err(run_error(format!(
            "{} holds no checkpoint: {} is missing",
            dir.display(),
            path.display()
        )));
    }
    Checkpoint::read(&path).map_err(|e| run_error(e.to_string()))
}

/// Reads `dir/checkpoint.safetensors` and restores the experiment's trainer from it.
///
/// # Errors
/// A run error when the checkpoint is missing, truncated, corrupt or from another run.
pub fn restore_checkpoint<B: Backend>(
    exp: &mut ToyExperiment<B>,
    dir: &Path,
) -> Result<Checkpoint, CliError> {
    let ck = read_checkpoint(dir)?;
    exp.trainer
        .restore(&ck)
        .map_err(|e| run_error(e.to_string()))?;
    Ok(ck)
}

/// The error of a failed training step. A diverged loss names the last good checkpoint,
/// which was kept, and what to change; `unit` is what the run counts (`step`, `window`).
pub fn training_error(error: TrainError, unit: &str, checkpoint_step: u64, dir: &Path) -> CliError {
    match error {
        TrainError::Diverged { step, value } => run_error(format!(
            "training diverged at {unit} {step}: the loss is {value}; stopped without saving the diverged state. The last good checkpoint ({unit} {checkpoint_step}) is kept at {}. Lower train.lr or set train.grad_clip",
            checkpoint_path(dir).display()
        )),
        e => run_error(format!("training failed: {e}")),
    }
}

/// Where a run directory keeps its checkpoint.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// The figures of a greedy evaluation on the test split, as `summary.json` and
/// `modula eval --json` print them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The test loss: mean squared error on the test split.
    pub test_loss: f64,
    /// Mean `-log p(y | x, a)` on the test split.
    pub test_nll: f64,
    /// Fraction of test points whose greedy module is the majority module of their regime.
    pub purity: f64,
    /// `exp` of the entropy of the first layer's greedy usage.
    pub effective_modules: f64,
    /// `exp` of the controllers' mean entropy on the test split.
    pub controller_perplexity: f64,
    /// Per layer, how many test points each module served.
    pub usage: Vec<Vec<u64>>,
    /// Test MSE of the best single linear map, the yardstick.
    pub linear_baseline_mse: f64,
}

impl Figures {
    /// The figures of an evaluation and the task's linear baseline.
    pub fn new(eval: &ToyEval, linear_baseline_mse: f64) -> Self {
        Figures {
            test_loss: eval.test_mse,
            test_nll: eval.test_nll,
            purity: eval.purity,
            effective_modules: eval.effective_modules,
            controller_perplexity: eval.controller_perplexity,
            usage: eval.usage.clone(),
            linear_baseline_mse,
        }
    }

    /// The figures as two human-readable lines.
    pub fn text(&self) -> String {
        format!(
            "test MSE {:.4} (linear baseline {:.4}), test NLL {:.4}\npurity {:.4}, effective modules {:.2}, controller perplexity {:.2}, usage {:?}",
            self.test_loss,
            self.linear_baseline_mse,
            self.test_nll,
            self.purity,
            self.effective_modules,
            self.controller_perplexity,
            self.usage.first().cloned().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolved_config_reads_back_equal_with_short_floats() {
        let mut cfg = RunConfig::default();
        cfg.train.lr = 0.003;
        cfg.model.variance = 1e-7;
        let text = cfg.to_toml();
        assert!(text.contains("lr = 0.003\n"), "{text}");
        assert!(text.find("[task]") < text.find("[model]"), "{text}");
        let back: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }
}
