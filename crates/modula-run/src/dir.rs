//! A run directory and its files: the resolved `config.toml`, `metrics.jsonl`, the latest
//! `checkpoint.safetensors`, `summary.json` and `changes.jsonl`; how they are named, created
//! and read; what state a directory is in; and [`RunDir`], a directory owned by this process.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use modula_em::TrainError;
use modula_nn::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, RunConfig};
use crate::error::{RunError, run_error};
use crate::lock::{self, DirLock};
use crate::{files, history, memory};

/// The resolved configuration of a run, as written to the run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// File in a converted run's directory recording where it came from (`modula convert`).
pub const CONVERT_FILE: &str = "convert.json";
/// One JSON object per logging interval.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The latest checkpoint (written atomically).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The final figures of a run.
pub const SUMMARY_FILE: &str = "summary.json";
/// The configuration changes accepted on resume (`--accept-config-change`), one JSON object a
/// line.
pub const CHANGES_FILE: &str = "changes.jsonl";

/// Checkpoint metadata key of the resolved configuration.
pub const META_CONFIG: &str = "modula.config";
/// Checkpoint metadata key of the partly accumulated logging interval.
pub const META_INTERVAL: &str = "modula.interval";
/// Checkpoint metadata key of the training seconds spent up to the checkpoint.
pub const META_SECONDS: &str = "modula.seconds";
/// Checkpoint metadata key of the number of `metrics.jsonl` records logged up to the
/// checkpoint, against which a resume checks that the history is whole.
pub const META_RECORDS: &str = "modula.records";

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

/// Reads the resolved configuration of an existing run directory.
///
/// # Errors
/// A run error when the directory holds no run or its configuration is unusable.
pub fn read_run_config(dir: &Path) -> Result<RunConfig, RunError> {
    let path = dir.join(CONFIG_FILE);
    existing_dir(dir)?;
    if !path.is_file() {
        return Err(run_error(format!(
            "{} holds no run: there is no {CONFIG_FILE}; start one with `modula train --out {}`",
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

/// Checks that `dir` is an existing directory.
///
/// # Errors
/// A run error saying that it does not exist or is a file.
pub fn existing_dir(dir: &Path) -> Result<(), RunError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(run_error(if dir.exists() {
        format!("{} is not a run directory: it is a file", dir.display())
    } else {
        format!(
            "{} is not a run directory: it does not exist; start a run there with `modula train --out {}`",
            dir.display(),
            dir.display()
        )
    }))
}

/// Reads `dir/checkpoint.safetensors`.
///
/// # Errors
/// A run error when the checkpoint is missing (saying whether the run can be continued),
/// truncated or corrupt.
pub fn read_checkpoint(dir: &Path) -> Result<Checkpoint, RunError> {
    let path = checkpoint_path(dir);
    if !path.is_file() {
        return Err(match state(dir)? {
            DirState::Unstarted => run_error(format!(
                "{} holds no checkpoint yet: its run stopped before writing the first one; start it again with `modula train --resume {}`",
                dir.display(),
                dir.display()
            )),
            _ => run_error(format!(
                "{} holds no checkpoint: {} is missing",
                dir.display(),
                path.display()
            )),
        });
    }
    // A checkpoint is read whole: one larger than the memory left (a damaged or foreign
    // file) is refused rather than allowed to exhaust it.
    let len = fs::metadata(&path).map_or(0, |m| m.len());
    if let Some((room, source)) = memory::available()
        && len > room
    {
        return Err(run_error(format!(
            "checkpoint {} is {}, more than the {} of memory available ({source}); it is damaged or not this run's",
            path.display(),
            memory::size(len),
            memory::size(room)
        )));
    }
    Checkpoint::read(&path).map_err(|e| run_error(e.to_string()))
}

/// What a run directory holds, as a command finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirState {
    /// No file of a run (files of other programs do not count).
    Empty,
    /// A run stopped before its first checkpoint: its `config.toml`, and in `metrics.jsonl`
    /// at most the record of step 0. Nothing was trained, so the run starts again from step 0.
    Unstarted,
    /// A run with its checkpoint.
    Run,
    /// Files of a run (named here) but no checkpoint: history that nothing can continue.
    Orphaned(Vec<String>),
}

/// The files a run writes besides `config.toml` and the checkpoint: the history, the summary
/// and the plots. Any of them without a checkpoint means a history that cannot be continued.
const RUN_OUTPUTS: [&str; 9] = [
    METRICS_FILE,
    CHANGES_FILE,
    SUMMARY_FILE,
    "loss.png",
    "loss.svg",
    "modules.png",
    "modules.svg",
    "usage.png",
    "usage.svg",
];

/// Classifies what `dir` holds (a directory that does not exist is empty).
///
/// # Errors
/// A run error naming `metrics.jsonl` when it cannot be read or is damaged.
pub fn state(dir: &Path) -> Result<DirState, RunError> {
    if checkpoint_path(dir).exists() {
        return Ok(DirState::Run);
    }
    let metrics = history::read(&dir.join(METRICS_FILE))?;
    let trained = (0..metrics.records.len()).any(|i| metrics.step(i) > 0);
    let outputs: Vec<String> = RUN_OUTPUTS
        .iter()
        .filter(|f| dir.join(f).exists())
        .filter(|&&f| f != METRICS_FILE || trained)
        .map(|f| f.to_string())
        .collect();
    Ok(if !outputs.is_empty() {
        DirState::Orphaned(outputs)
    } else if dir.join(CONFIG_FILE).exists() {
        DirState::Unstarted
    } else {
        DirState::Empty
    })
}

/// A run directory this process owns: it holds the directory's lock until dropped, and has
/// removed what interrupted writes left there. A directory it created and then left empty (a
/// command refused after taking it, for example for want of a wgpu adapter) is removed again
/// when it is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    created: bool,
    _lock: DirLock,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_lock = fs::read_dir(&self.path).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_name() == std::ffi::OsStr::new(lock::LOCK_FILE))
        });
        // Best effort, and while the lock is still held: nothing of value is lost if the
        // directory stays.
        if only_lock {
            let _ = fs::remove_file(self.path.join(lock::LOCK_FILE));
            let _ = fs::remove_dir(&self.path);
        }
    }
}

impl RunDir {
    /// Creates `path` if needed and takes it for a command that writes there.
    ///
    /// # Errors
    /// [`RunError::Locked`] when another process holds it; a run error when `path` is a file
    /// or cannot be created, listed or cleaned.
    pub fn take(path: &Path) -> Result<RunDir, RunError> {
        if path.exists() && !path.is_dir() {
            return Err(run_error(format!(
                "{} is a file, not a directory; choose another directory",
                path.display()
            )));
        }
        let created = !path.exists();
        fs::create_dir_all(path)
            .map_err(|e| run_error(format!("cannot create directory {}: {e}", path.display())))?;
        let lock = lock::lock(path)?;
        files::remove_leftovers(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
            created,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What it holds.
    ///
    /// # Errors
    /// As [`state`].
    pub fn state(&self) -> Result<DirState, RunError> {
        state(&self.path)
    }

    /// Removes the files of a run that stopped before its first checkpoint, for a new start.
    ///
    /// # Errors
    /// A run error naming a file that cannot be removed.
    pub fn clear_unstarted(&self) -> Result<(), RunError> {
        for name in [CONFIG_FILE, METRICS_FILE] {
            let path = self.path.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(run_error(format!("cannot remove {}: {e}", path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The error of a failed training step. A diverged loss names the last good checkpoint,
/// which was kept, and what to change; `unit` is what the run counts (`step`, `window`).
pub fn training_error(error: TrainError, unit: &str, checkpoint_step: u64, dir: &Path) -> RunError {
    match error {
        TrainError::Diverged { step, value } => run_error(format!(
            "training diverged at {unit} {step}: the loss is {value}; stopped without saving the diverged state. The last good checkpoint ({unit} {checkpoint_step}) is kept at {}. Lower train.lr or set train.grad_clip",
            checkpoint_path(dir).display()
        )),
        TrainError::LossExploded {
            step,
            value,
            initial,
            factor,
        } => run_error(format!(
            "training diverged at {unit} {step}: the loss is {value:.4e}, more than {factor} times the initial loss {initial:.4} (train.divergence_factor; magnitudes under 1 count as 1); stopped without saving the diverged state. The last good checkpoint ({unit} {checkpoint_step}) is kept at {}. Lower train.lr or set train.grad_clip (or raise train.divergence_factor if such a loss is expected)",
            checkpoint_path(dir).display()
        )),
        e => run_error(format!("training failed: {e}")),
    }
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
