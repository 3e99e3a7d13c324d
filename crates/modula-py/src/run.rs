//! Training into run directories and evaluating them, through `modula-run`, the library the
//! `modula` binary uses: a run trained from Python is the run `modula train` would have
//! trained, in the same directory layout, and each can open, resume and evaluate the other's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use modula_cpu::Cpu;
use modula_em::Algo;
use modula_run::dir::{default_run_dir, read_run_config};
use modula_run::{BackendKind, DeviceInfo, Hooks, Overrides, RunConfig, RunError, Start};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use crate::error::{Error, Kind, Result, detached, guarded};

/// How often a training call takes the GIL back to let Python see a pending Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// The configuration `source` names: a TOML file's path, or its text as JSON (a dict from
/// Python, converted by the caller), validated after the overrides.
fn resolve(source: ConfigSource, overrides: &Overrides) -> Result<RunConfig> {
    let mut cfg = match source {
        ConfigSource::Path(path) => RunConfig::read(&path)?,
        ConfigSource::Json(json) => {
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| Error::new(Kind::Config, format!("config dict: {e}")))?;
            let text = toml::to_string(&value).map_err(|e| {
                Error::new(
                    Kind::Config,
                    format!("config dict cannot be written as TOML ({e}); use str, int, float, bool, lists and dicts of them, with None left out"),
                )
            })?;
            RunConfig::parse(&text, "(the config dict)")?
        }
        ConfigSource::Default => RunConfig::default_for("toy")?,
    };
    cfg.apply(overrides, false);
    cfg.validate()?;
    cpu_only(&cfg)?;
    Ok(cfg)
}

/// Where a configuration comes from.
enum ConfigSource {
    Path(PathBuf),
    Json(String),
    Default,
}

/// Refuses a run on wgpu: the Python package is built with the CPU backend alone.
fn cpu_only(cfg: &RunConfig) -> Result<()> {
    if cfg.common().backend != BackendKind::Cpu {
        return Err(Error::new(
            Kind::Config,
            "`backend` is \"wgpu\"; the Python package trains on the CPU backend only: set backend = \"cpu\", or train with the `modula` command",
        ));
    }
    Ok(())
}

/// Trains a run, as `modula train` does: a new run of `config` (a path, or a dict already
/// dumped to JSON by the Python wrapper; the toy task's defaults when both are absent) in
/// `out`, or, with `resume`, the run in that directory continued. Returns the run directory.
/// Ctrl-C stops the run after writing its checkpoint and raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (config_path = None, config_json = None, out = None, resume = None, progress = true, steps = None, epochs = None, max_minutes = None, seed = None, algo = None, threads = None))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    progress: bool,
    steps: Option<u64>,
    epochs: Option<u64>,
    max_minutes: Option<f64>,
    seed: Option<u64>,
    algo: Option<String>,
    threads: Option<usize>,
) -> PyResult<PathBuf> {
    let algo = match algo.as_deref() {
        None => None,
        Some(name) => Some(Algo::from_name(name).ok_or_else(|| {
            Error::new(
                Kind::Config,
                format!(
                    "`algo` is {name:?}; use one of {}",
                    Algo::ALL.map(Algo::name).join(", ")
                ),
            )
        })?),
    };
    let overrides = Overrides {
        algo,
        seed,
        steps,
        epochs,
        max_minutes,
        threads,
        ..Overrides::default()
    };
    let source = match (config_path, config_json) {
        (Some(path), _) => ConfigSource::Path(path),
        (None, Some(json)) => ConfigSource::Json(json),
        (None, None) => ConfigSource::Default,
    };
    let mut pending: Option<PyErr> = None;
    let result = detached(py, || {
        let start = match &resume {
            Some(dir) => {
                let start = Start::resume(dir, &overrides, false)?;
                cpu_only(&start.cfg)?;
                start
            }
            None => {
                let cfg = resolve(source, &overrides)?;
                let dir = out.unwrap_or_else(|| default_run_dir(&cfg.name(), cfg.common().seed));
                Start::fresh(cfg, &dir)?
            }
        };
        let dir = start.dir.path().to_path_buf();
        let backend = Cpu::with_threads(start.cfg.common().threads);
        let mut last = Instant::now();
        let mut interrupted = || {
            if last.elapsed() < SIGNAL_CHECK {
                return false;
            }
            last = Instant::now();
            match Python::attach(|py| py.check_signals()) {
                Ok(()) => false,
                Err(e) => {
                    pending = Some(e);
                    true
                }
            }
        };
        let hooks = Hooks {
            quiet: !progress,
            interrupted: Some(&mut interrupted),
        };
        match modula_run::train(backend, DeviceInfo::cpu(), start, hooks) {
            Ok(()) => Ok(Ok(dir)),
            Err(RunError::Interrupted { dir, step, unit }) => Ok(Err(format!(
                "interrupted at {unit} {step}; the checkpoint is saved in {}: continue the run with modula.train(resume={:?})",
                dir.display(),
                dir.display().to_string()
            ))),
            Err(e) => Err(e.into()),
        }
    })?;
    match result {
        Ok(dir) => Ok(dir),
        Err(message) => Err(match pending {
            // The signal handler's own exception (KeyboardInterrupt for Ctrl-C) goes on,
            // now saying where the checkpoint is.
            Some(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => {
                PyKeyboardInterrupt::new_err(message)
            }
            Some(e) => e,
            None => Error::new(Kind::Internal, message).into(),
        }),
    }
}

/// Evaluates the checkpoint of the run in `dir` greedily on its held-out splits, as `modula
/// eval --json` does, and returns the JSON text.
#[pyfunction]
pub fn evaluate(py: Python<'_>, dir: PathBuf) -> PyResult<String> {
    Ok(detached(py, || {
        let mut cfg = read_run_config(&dir)?;
        cpu_only(&cfg)?;
        modula_run::start::fit_threads(&mut cfg)?;
        let backend = Cpu::with_threads(cfg.common().threads);
        let eval = modula_run::evaluate(backend, DeviceInfo::cpu(), &cfg, &dir)?;
        Ok(serde_json::to_string(&eval).expect("the evaluation serialises"))
    })?)
}

/// The resolved configuration of the run in `dir` as JSON text, after checking that the
/// directory holds a run.
#[pyfunction]
pub fn read_config(dir: PathBuf) -> PyResult<String> {
    Ok(guarded(|| {
        let cfg = read_run_config(&dir)?;
        let value: toml::Value = toml::from_str(&cfg.to_toml())
            .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
        Ok(serde_json::to_string(&value).expect("a TOML value serialises"))
    })?)
}
