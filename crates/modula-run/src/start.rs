//! How a training command starts: a new run in a directory that is empty or holds a run
//! stopped before its first checkpoint, or the continuation of a run from its checkpoint.
//! Everything that can refuse a run happens here, before the model is built and before a new
//! directory is created: the directory's state, the configuration (a resume refuses changes to
//! what is trained unless they are accepted), the thread count and the memory estimate.

use std::path::Path;

use modula_nn::Checkpoint;
use modula_tasks::{ImageData, LmData};

use crate::config::{Difference, Overrides, RunConfig};
use crate::dir::{self, CHECKPOINT_FILE, DirState, META_CONFIG, RunDir};
use crate::error::{RunError, run_error};
use crate::{console, images, lm, memory};

/// The data a run loads before it starts.
#[derive(Debug)]
pub enum RunData {
    /// A language model's corpus.
    Lm(LmData),
    /// An image run's training and test sets.
    Images(ImageData),
}

/// A run ready to train.
#[derive(Debug)]
pub struct Start {
    /// The configuration to train.
    pub cfg: RunConfig,
    /// The run directory, owned by this process until the run ends.
    pub dir: RunDir,
    /// The checkpoint to continue from; `None` starts from step 0.
    pub checkpoint: Option<Checkpoint>,
    /// Changes to training-defining fields that the resume accepted, to record in
    /// `changes.jsonl`.
    pub changes: Vec<Difference>,
    /// A language model's corpus or an image run's images, loaded before the run starts (a
    /// corpus sets the model's size for the memory estimate) and kept for the run.
    pub data: Option<RunData>,
    /// The memory estimate the run was checked against.
    pub memory: memory::Estimate,
    /// Tensors a new run starts from instead of its seeded initialisation (an image run's
    /// converted network, see `modula convert`); read only when there is no `checkpoint`.
    pub initial: Option<Checkpoint>,
}

impl Start {
    /// A new run of `cfg` (validated; `threads = 0` means all cores) in `out`, which may not
    /// exist yet, may be empty, or may hold a run stopped before its first checkpoint.
    ///
    /// # Errors
    /// A run error when the directory holds a run or other run files, another process holds
    /// it, the data cannot be loaded, or the run would not fit in memory; nothing is created
    /// then.
    pub fn fresh(mut cfg: RunConfig, out: &Path) -> Result<Start, RunError> {
        fit_threads(&mut cfg)?;
        let (data, memory) = prepare(&cfg)?;
        let dir = RunDir::take(out)?;
        match dir.state()? {
            DirState::Empty => {}
            DirState::Unstarted => {
                dir.clear_unstarted()?;
                console::eprint(&format!(
                    "modula train: {} held a run stopped before its first checkpoint; starting this run in its place\n",
                    out.display()
                ))?;
            }
            DirState::Run => {
                return Err(run_error(format!(
                    "{} already holds a run; continue it with `modula train --resume {}`, or choose another --out",
                    out.display(),
                    out.display()
                )));
            }
            DirState::Orphaned(files) => return Err(orphaned(out, &files)),
        }
        Ok(Start {
            cfg,
            dir,
            checkpoint: None,
            changes: Vec::new(),
            data,
            memory,
            initial: None,
        })
    }

    /// Continues the run in `dir` with the flags' `overrides` (only fields of
    /// [`crate::config::EXECUTION_FIELDS`] may change). The checkpoint's own configuration
    /// must agree with `config.toml` in every other field, unless `accept_changes`, when the
    /// differences are recorded in the run's `changes.jsonl`.
    ///
    /// # Errors
    /// A run error when the directory holds no run, another process holds it, the
    /// configuration or checkpoint is unusable or differs, the data cannot be loaded, or the
    /// run would not fit in memory.
    pub fn resume(
        path: &Path,
        overrides: &Overrides,
        accept_changes: bool,
    ) -> Result<Start, RunError> {
        dir::existing_dir(path)?;
        let dir = RunDir::take(path)?;
        let state = dir.state()?;
        match &state {
            DirState::Empty => {
                return Err(run_error(format!(
                    "{} holds no run; start one with `modula train --out {}`",
                    path.display(),
                    path.display()
                )));
            }
            DirState::Orphaned(files) => return Err(orphaned(path, files)),
            DirState::Unstarted | DirState::Run => {}
        }
        let mut cfg = dir::read_run_config(path)?;
        cfg.apply(overrides, true);
        cfg.validate()?;
        fit_threads(&mut cfg)?;
        let (checkpoint, changes) = if state == DirState::Run {
            let ck = dir::read_checkpoint(path).map_err(|e| {
                run_error(format!(
                    "{e}; the run cannot be continued from it: restore the file, or start a new run in another directory"
                ))
            })?;
            let changes = changes_since(&ck, &cfg, path, accept_changes)?;
            (Some(ck), changes)
        } else {
            dir.clear_unstarted()?;
            console::eprint(&format!(
                "modula train: {} holds a run stopped before its first checkpoint; starting it again from step 0\n",
                path.display()
            ))?;
            (None, Vec::new())
        };
        let (data, memory) = prepare(&cfg)?;
        Ok(Start {
            cfg,
            dir,
            checkpoint,
            changes,
            data,
            memory,
            initial: None,
        })
    }
}

/// Fits the thread count of `cfg` to this machine ([`RunConfig::fit_threads`]), saying so on
/// standard error when it lowers it.
///
/// # Errors
/// [`RunError::OutputClosed`] when the note cannot be written.
pub fn fit_threads(cfg: &mut RunConfig) -> Result<(), RunError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cfg.fit_threads(cores) {
        Some(note) => console::eprint(&format!("modula: {note}\n")),
        None => Ok(()),
    }
}

/// Loads a language model's corpus and checks the run's memory estimate against what this
/// process may use.
fn prepare(cfg: &RunConfig) -> Result<(Option<RunData>, memory::Estimate), RunError> {
    let data = match cfg {
        RunConfig::Lm(run) => Some(RunData::Lm(lm::load_data(run)?)),
        RunConfig::Image(run) => Some(RunData::Images(images::load_data(run)?)),
        RunConfig::Toy(_) => None,
    };
    let corpus = match &data {
        Some(RunData::Lm(d)) => Some(d),
        _ => None,
    };
    let estimate = memory::check(cfg, corpus)?;
    Ok((data, estimate))
}

/// The refusal of a directory holding run files without a checkpoint: neither `--resume` nor
/// a new run can use it.
fn orphaned(path: &Path, files: &[String]) -> RunError {
    run_error(format!(
        "{} holds {} but its {CHECKPOINT_FILE} is missing, so there is no run to continue, and a new run would mix its files with these; choose another directory, or remove those files",
        path.display(),
        files.join(", ")
    ))
}

/// The training-defining differences between the configuration the checkpoint was made with
/// and `cfg`: an error naming them, unless `accept` (then they are returned to be recorded).
fn changes_since(
    ck: &Checkpoint,
    cfg: &RunConfig,
    dir: &Path,
    accept: bool,
) -> Result<Vec<Difference>, RunError> {
    let ck_path = dir::checkpoint_path(dir);
    let stored = ck.metadata.get(META_CONFIG).ok_or_else(|| {
        run_error(format!(
            "checkpoint {} lacks the `{META_CONFIG}` metadata; it was not written by `modula train`",
            ck_path.display()
        ))
    })?;
    let stored = RunConfig::parse(stored, &format!("{} ({META_CONFIG})", ck_path.display()))?;
    let changes = cfg.training_differences(&stored);
    if changes.is_empty() || accept {
        return Ok(changes);
    }
    let show =
        |v: &Option<toml::Value>| v.as_ref().map_or("(absent)".to_string(), |v| v.to_string());
    let list: Vec<String> = changes
        .iter()
        .map(|d| {
            format!(
                "`{}` is {} in config.toml but {} in the checkpoint",
                d.field,
                show(&d.this),
                show(&d.other)
            )
        })
        .collect();
    Err(run_error(format!(
        "{}: {}; these fields define what is trained, so resuming would continue a different run. Restore config.toml, or pass --accept-config-change to continue with the new values (recorded in {})",
        dir.join(dir::CONFIG_FILE).display(),
        list.join("; "),
        dir.join(dir::CHANGES_FILE).display()
    )))
}
