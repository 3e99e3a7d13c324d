//! A run directory and its files: the resolved `config.toml`, `metrics.jsonl`, the latest
//! `checkpoint.safetensors` and `summary.json`, and how they are named, created and read.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use modula_em::TrainError;
use modula_nn::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, RunConfig};
use crate::error::{RunError, run_error};

/// The resolved configuration of a run, as written to the run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// One JSON object per logging interval.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The latest checkpoint (written atomically).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The final figures of a run.
pub const SUMMARY_FILE: &str = "summary.json";

/// Checkpoint metadata key of the resolved configuration.
pub const META_CONFIG: &str = "modula.config";
/// Checkpoint metadata key of the partly accumulated logging interval.
pub const META_INTERVAL: &str = "modula.interval";
/// Checkpoint metadata key of the training seconds spent up to the checkpoint.
pub const META_SECONDS: &str = "modula.seconds";

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
    /// The CPU backend.
    pub fn cpu() -> Self {
        DeviceInfo {
            backend: BackendKind::Cpu,
            adapter: None,
            adapter_type: None,
        }
    }

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

/// Where a run directory keeps its checkpoint.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Writes a whole file, naming it in the error.
///
/// # Errors
/// A run error naming the file.
pub fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    fs::write(path, text).map_err(|e| run_error(format!("cannot write {}: {e}", path.display())))
}

/// Reads the resolved configuration of an existing run directory.
///
/// # Errors
/// A run error when the directory holds no run or its configuration is unusable.
pub fn read_run_config(dir: &Path) -> Result<RunConfig, RunError> {
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
    if cfg.common().threads == 0 {
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
pub fn read_checkpoint(dir: &Path) -> Result<Checkpoint, RunError> {
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

/// The error of a failed training step. A diverged loss names the last good checkpoint,
/// which was kept, and what to change; `unit` is what the run counts (`step`, `window`).
pub fn training_error(error: TrainError, unit: &str, checkpoint_step: u64, dir: &Path) -> RunError {
    match error {
        TrainError::Diverged { step, value } => run_error(format!(
            "training diverged at {unit} {step}: the loss is {value}; stopped without saving the diverged state. The last good checkpoint ({unit} {checkpoint_step}) is kept at {}. Lower train.lr or set train.grad_clip",
            checkpoint_path(dir).display()
        )),
        e => run_error(format!("training failed: {e}")),
    }
}

/// Creates the directory of a new run; an existing run there is never overwritten.
///
/// # Errors
/// A run error when the directory holds a run or cannot be created.
pub fn prepare_fresh_dir(dir: &Path) -> Result<(), RunError> {
    if dir.join(CONFIG_FILE).exists() || checkpoint_path(dir).exists() {
        return Err(run_error(format!(
            "{} already holds a run; continue it with `modula train --resume {}` or choose another --out",
            dir.display(),
            dir.display()
        )));
    }
    fs::create_dir_all(dir).map_err(|e| {
        run_error(format!(
            "cannot create run directory {}: {e}",
            dir.display()
        ))
    })
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a killed run may have logged past its
/// last checkpoint, and may have left a torn last line), rewrites the file with them verbatim
/// and returns them.
///
/// # Errors
/// A run error naming the file when it cannot be read or written.
pub fn trim_metrics(path: &Path, step: u64) -> Result<Vec<String>, RunError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(run_error(format!("cannot read {}: {e}", path.display()))),
    };
    let kept: Vec<String> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(str::to_string)
        .collect();
    let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
    write_file(path, &body)?;
    Ok(kept)
}

/// `runs/<name>-<seed>-<UTC timestamp>` under the current directory, with a numeric suffix if that
/// already exists.
pub fn default_run_dir(name: &str, seed: u64) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{name}-{seed}-{}", utc_timestamp(secs));
    let runs = Path::new("runs");
    let mut dir = runs.join(&base);
    let mut n = 2;
    while dir.exists() {
        dir = runs.join(format!("{base}-{n}"));
        n += 1;
    }
    dir
}
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc_timestamp(1_709_210_096), "20240229-123456");
    }
}
