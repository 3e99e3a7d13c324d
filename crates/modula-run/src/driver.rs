//! The training driver every task shares: steps the [`Trainer`] to its bound (iterations,
//! epochs or minutes), accumulates logging intervals, appends `metrics.jsonl`, writes
//! checkpoints with the run's metadata, shows progress, and hands the end of the run to the
//! task's [`Job`] for its summary.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use modula_em::{StepOutcome, Task, Trainer};
use modula_nn::Checkpoint;
use modula_tensor::Backend;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::dir::{
    self, CHANGES_FILE, CONFIG_FILE, META_CONFIG, META_INTERVAL, META_RECORDS, META_SECONDS,
    METRICS_FILE, RunDir,
};
use crate::error::{RunError, run_error};
use crate::memory::{self, Estimate};
use crate::start::Start;
use crate::{console, files, history};

/// Statistics accumulated over one logging interval. It is saved in every checkpoint (floats
/// as bit patterns), so a resumed run logs exactly what the uninterrupted run would even when
/// a checkpoint falls inside an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    /// Gradient steps in the interval.
    pub gradient_steps: u64,
    /// Sum of the steps' mean task NLL.
    pub nll: f64,
    /// Sum of the steps' mean controller NLL.
    pub ctrl_nll: f64,
    /// Steps that reported controller entropies.
    pub entropy_steps: u64,
    /// Sum of their mean entropies.
    pub mean_entropy: f64,
    /// Sum of their batch entropies.
    pub batch_entropy: f64,
    /// Per table layer, how many (row, slot) pairs each module served.
    pub usage: Vec<Vec<u64>>,
    /// Fraction of `a*` changed by the latest E-step (of the interval, or of the run when
    /// the job keeps it across intervals).
    pub changed: Option<f64>,
    /// E-steps in the interval.
    pub e_steps: u64,
    /// Sum of their fractions of `a*` changed.
    pub changed_sum: f64,
    /// Share of the task's keys visited by any E-step so far, after the interval's last one.
    pub coverage: Option<f64>,
    /// Training units (examples, tokens) of the interval's gradient steps.
    pub units: u64,
    /// Seconds spent in the interval's training steps.
    pub seconds: f64,
}

/// The checkpoint form of [`Interval`]: floats as their bit patterns.
#[derive(Serialize, Deserialize)]
struct StoredInterval {
    gradient_steps: u64,
    nll: u64,
    ctrl_nll: u64,
    entropy_steps: u64,
    mean_entropy: u64,
    batch_entropy: u64,
    usage: Vec<Vec<u64>>,
    changed: Option<u64>,
    // Added after runs were already checkpointed: absent in their intervals, which then
    // count no E-step (the first record after such a resume has no mean of `changed`).
    #[serde(default)]
    e_steps: u64,
    #[serde(default)]
    changed_sum: u64,
    #[serde(default)]
    coverage: Option<u64>,
    units: u64,
    seconds: u64,
}

impl Interval {
    /// Adds one iteration that took `seconds`.
    pub fn add(&mut self, o: &StepOutcome, seconds: f64) {
        if let Some(e) = &o.e_step {
            self.changed = Some(e.changed);
            self.e_steps += 1;
            self.changed_sum += e.changed;
            self.coverage = Some(e.coverage);
        }
        self.seconds += seconds;
        let Some(s) = &o.gradient else { return };
        self.gradient_steps += 1;
        self.nll += s.nll;
        self.ctrl_nll += s.ctrl_nll;
        if let Some(c) = &s.controller {
            self.entropy_steps += 1;
            self.mean_entropy += c.mean_entropy;
            self.batch_entropy += c.batch_entropy;
        }
        if self.usage.len() < s.usage.len() {
            self.usage.resize(s.usage.len(), Vec::new());
        }
        for (acc, u) in self.usage.iter_mut().zip(&s.usage) {
            if acc.len() < u.len() {
                acc.resize(u.len(), 0);
            }
            acc.iter_mut().zip(u).for_each(|(a, &b)| *a += b);
        }
        self.units += s.units as u64;
    }

    /// The mean of `sum` over `n` steps (`None` over none).
    pub fn mean(sum: f64, n: u64) -> Option<f64> {
        (n > 0).then(|| sum / n as f64)
    }

    /// Training units per second over the interval.
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.seconds.max(1e-9)
    }

    /// Empties the interval, keeping the latest E-step's figure when `keep_changed`.
    fn reset(&mut self, keep_changed: bool) {
        *self = Interval {
            changed: self.changed.filter(|_| keep_changed),
            ..Interval::default()
        };
    }

    fn to_meta(&self) -> String {
        let stored = StoredInterval {
            gradient_steps: self.gradient_steps,
            nll: self.nll.to_bits(),
            ctrl_nll: self.ctrl_nll.to_bits(),
            entropy_steps: self.entropy_steps,
            mean_entropy: self.mean_entropy.to_bits(),
            batch_entropy: self.batch_entropy.to_bits(),
            usage: self.usage.clone(),
            changed: self.changed.map(f64::to_bits),
            e_steps: self.e_steps,
            changed_sum: self.changed_sum.to_bits(),
            coverage: self.coverage.map(f64::to_bits),
            units: self.units,
            seconds: self.seconds.to_bits(),
        };
        serde_json::to_string(&stored).expect("the interval serialises")
    }

    fn from_meta(text: &str) -> Option<Self> {
        let s: StoredInterval = serde_json::from_str(text).ok()?;
        Some(Interval {
            gradient_steps: s.gradient_steps,
            nll: f64::from_bits(s.nll),
            ctrl_nll: f64::from_bits(s.ctrl_nll),
            entropy_steps: s.entropy_steps,
            mean_entropy: f64::from_bits(s.mean_entropy),
            batch_entropy: f64::from_bits(s.batch_entropy),
            usage: s.usage,
            changed: s.changed.map(f64::from_bits),
            e_steps: s.e_steps,
            changed_sum: f64::from_bits(s.changed_sum),
            coverage: s.coverage.map(f64::from_bits),
            units: s.units,
            seconds: f64::from_bits(s.seconds),
        })
    }
}

/// What the driver does after an iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Append a record to `metrics.jsonl`.
    pub log: bool,
    /// Evaluate on held-out data for that record.
    pub evaluate: bool,
    /// Write a checkpoint.
    pub checkpoint: bool,
}

/// A metrics record and the progress lines that show it.
#[derive(Debug)]
pub struct Logged {
    /// The `metrics.jsonl` line's object.
    pub record: serde_json::Value,
    /// A few words beside the progress bar.
    pub short: String,
    /// The plain progress line (without a terminal).
    pub line: String,
}

/// What a task adds to the driver: its trainer, schedule, records and summary.
pub trait Job<B: Backend> {
    /// The task.
    type Task: Task<B>;

    /// The trainer.
    fn trainer(&self) -> &Trainer<B, Self::Task>;

    /// The trainer, to step.
    fn trainer_mut(&mut self) -> &mut Trainer<B, Self::Task>;

    /// The resolved configuration.
    fn config(&self) -> &RunConfig;

    /// Iterations the run trains in total.
    fn total(&self) -> u64;

    /// What the iteration count `step` calls for.
    fn due(&self, step: u64, total: u64) -> Due;

    /// Whether a fresh run logs a record (with an evaluation) before training.
    fn initial_record(&self) -> bool;

    /// Whether the latest E-step's figure carries over into later intervals.
    fn keeps_changed(&self) -> bool;

    /// What an iteration is called in messages (`step`, `window`).
    fn unit(&self) -> &'static str;

    /// The line printed when training starts.
    fn banner(&self, dir: &Path) -> String;

    /// The record of `interval` at the trainer's step, evaluating when `evaluate`.
    ///
    /// # Errors
    /// A failed evaluation.
    fn record(&mut self, interval: &Interval, evaluate: bool) -> Result<Logged, RunError>;

    /// Writes `summary.json` (and anything else the task draws) and returns the figures as
    /// lines for standard output, given the training seconds and units over all resumed parts
    /// and every record logged.
    ///
    /// # Errors
    /// A failed evaluation or write.
    fn finish(
        &self,
        dir: &Path,
        train_seconds: f64,
        train_units: u64,
        records: &[serde_json::Value],
    ) -> Result<String, RunError>;
}

/// How a training call reports and when it stops early, for callers other than the command
/// line: the `modula` binary prints everything and runs to its bound (`Hooks::default()`),
/// while the Python bindings may train silently and stop at a Ctrl-C.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Train without printing the banner, progress, figures and memory lines.
    pub quiet: bool,
    /// Asked before every iteration; when it answers `true` the run writes its checkpoint
    /// and ends with [`RunError::Interrupted`] (no summary: the run is not over).
    pub interrupted: Option<&'a mut (dyn FnMut() -> bool + Send)>,
}

/// How progress is shown: a live bar on a terminal, plain lines otherwise, or not at all.
enum Progress {
    Bar(ProgressBar),
    Lines { total: u64 },
    Quiet,
}

impl Progress {
    fn new(total: u64, position: u64, quiet: bool) -> Self {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} (eta {eta}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_position(position);
            Progress::Bar(bar)
        } else {
            Progress::Lines { total }
        }
    }

    fn tick(&self, step: u64) {
        if let Progress::Bar(bar) = self {
            bar.set_position(step);
        }
    }

    fn note(&self, logged: &Logged) -> Result<(), RunError> {
        match self {
            Progress::Bar(bar) => {
                bar.set_message(logged.short.clone());
                Ok(())
            }
            Progress::Lines { total } => {
                console::eprint(&format!("{} (of {total})\n", logged.line))
            }
            Progress::Quiet => Ok(()),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// Checkpoint metadata key of the training units seen over all resumed parts.
const META_UNITS: &str = "modula.units";

/// A run in progress: the job, its directory and the logging state.
struct Driver<B: Backend, J: Job<B>> {
    job: J,
    dir: RunDir,
    interval: Interval,
    records: Vec<serde_json::Value>,
    metrics: PathBuf,
    train_seconds: f64,
    train_units: u64,
    checkpoint_step: u64,
    _backend: std::marker::PhantomData<B>,
}

/// Trains `job` into `start.dir`: from step 0, or from `start.checkpoint`, whose history it
/// first checks and trims to the checkpoint's step; `hooks` say whether to print and when to
/// stop early.
///
/// # Errors
/// A run error for an unreadable or foreign checkpoint, a history that does not match it, a
/// diverged loss or a failed write, and [`RunError::Interrupted`] when `hooks` stopped it.
pub fn train<B: Backend, J: Job<B>>(
    mut job: J,
    start: Start,
    hooks: Hooks<'_>,
) -> Result<(), RunError> {
    let Start {
        dir,
        checkpoint,
        changes,
        memory,
        ..
    } = start;
    let metrics_path = dir.path().join(METRICS_FILE);
    let config_path = dir.path().join(CONFIG_FILE);
    let config_text = job.config().to_toml();
    let resuming = checkpoint.is_some();
    let (interval, records, train_seconds, train_units) = match checkpoint {
        Some(ck) => {
            job.trainer_mut()
                .restore(&ck)
                .map_err(|e| run_error(e.to_string()))?;
            let step = job.trainer().step;
            if step > job.total() {
                return Err(run_error(format!(
                    "the checkpoint in {} is at {} {step}, beyond the {} this run trains; pass a larger --steps or --epochs",
                    dir.path().display(),
                    job.unit(),
                    job.total()
                )));
            }
            let meta = |k: &str| ck.metadata.get(k).map(String::as_str);
            let interval = meta(META_INTERVAL)
                .and_then(Interval::from_meta)
                .ok_or_else(|| {
                    run_error(format!(
                        "checkpoint {} lacks the `{META_INTERVAL}` metadata; it was not written by `modula train`",
                        dir::checkpoint_path(dir.path()).display()
                    ))
                })?;
            let seconds = meta(META_SECONDS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            let units = meta(META_UNITS).and_then(|s| s.parse().ok()).unwrap_or(0);
            let logged = meta(META_RECORDS).and_then(|s| s.parse().ok());
            let records = trim_history(&metrics_path, step, logged, job.unit())?;
            (interval, records, seconds, units)
        }
        None => (Interval::default(), Vec::new(), 0.0, 0),
    };
    if files::read_limited(&config_path, files::CONFIG_LIMIT)
        .ok()
        .as_deref()
        != Some(config_text.as_bytes())
    {
        files::replace(&config_path, "config", config_text.as_bytes())?;
    }
    let checkpoint_step = job.trainer().step;
    let mut driver = Driver {
        job,
        dir,
        interval,
        records,
        metrics: metrics_path,
        train_seconds,
        train_units,
        checkpoint_step,
        _backend: std::marker::PhantomData,
    };
    if !resuming {
        if driver.job.initial_record() {
            // The curves start from the untrained model's evaluation.
            driver.record(true)?;
        }
        // A checkpoint before the first step means there is always a last good state to keep
        // if the loss diverges, and a run killed early can still be resumed.
        driver.save_checkpoint()?;
    } else if !changes.is_empty() {
        // The accepted changes go into the history, and the checkpoint takes the new
        // configuration, so that the next resume compares against it.
        let path = driver.dir.path().join(CHANGES_FILE);
        for change in &changes {
            let mut record = change.record();
            record["step"] = checkpoint_step.into();
            history::append(&path, "changes-append", &record)?;
        }
        driver.save_checkpoint()?;
    }
    driver.run(&memory, hooks)
}

/// A failed collective of a data-parallel run, as the driver reports it.
fn train_failed(e: modula_em::TrainError) -> RunError {
    run_error(e.to_string())
}

/// The part of a data-parallel run that a rank other than 0 plays: it trains `job` (whose
/// trainer is distributed) in step with rank 0's [`train`], from `checkpoint` (rank 0's run
/// directory's, read by this rank) or from the start, taking part in every collective rank 0
/// takes (checkpoints, the stop decision) and writing nothing: rank 0 owns the run directory.
///
/// # Errors
/// A diverged loss (which every rank sees alike), a failed collective or a foreign checkpoint.
pub fn follow<B: Backend, J: Job<B>>(
    mut job: J,
    checkpoint: Option<Checkpoint>,
) -> Result<(), RunError> {
    let t = job.trainer_mut();
    if let Some(ck) = &checkpoint {
        t.restore(ck).map_err(train_failed)?;
    } else {
        // Rank 0 writes a checkpoint before the first step.
        t.checkpoint().map_err(train_failed)?;
    }
    let total = job.total();
    let mut checkpoint_step = job.trainer().step;
    while job.trainer().step < total {
        if job.trainer().agree(false).map_err(train_failed)? {
            break;
        }
        job.trainer_mut().step().map_err(train_failed)?;
        let step = job.trainer().step;
        if job.due(step, total).checkpoint {
            job.trainer().checkpoint().map_err(train_failed)?;
            checkpoint_step = step;
        }
    }
    if checkpoint_step != job.trainer().step {
        job.trainer().checkpoint().map_err(train_failed)?;
    }
    Ok(())
}

/// Reads the history of a run resumed from the checkpoint at `step`: the records up to it
/// (later ones were logged after the checkpoint and will be logged again), which must number
/// `logged` when the checkpoint says. The file is replaced (atomically) when it held more, so
/// that appending continues a clean history.
fn trim_history(
    path: &Path,
    step: u64,
    logged: Option<usize>,
    unit: &str,
) -> Result<Vec<serde_json::Value>, RunError> {
    let mut history = history::read(path)?;
    let kept = (0..history.records.len())
        .take_while(|&i| history.step(i) <= step)
        .count();
    if let Some(logged) = logged
        && kept != logged
    {
        return Err(run_error(format!(
            "{} holds {kept} records up to {unit} {step}, but the checkpoint was written after {logged}: the history was cut short or edited, so the resumed run's history would not be whole; restore the file, or start a new run with --out",
            path.display()
        )));
    }
    let trimmed = kept < history.records.len() || history.untidy;
    history.lines.truncate(kept);
    history.records.truncate(kept);
    if trimmed {
        files::replace(path, "history-rewrite", history.text().as_bytes())?;
    }
    Ok(history.records)
}

impl<B: Backend, J: Job<B>> Driver<B, J> {
    fn run(mut self, memory: &Estimate, mut hooks: Hooks<'_>) -> Result<(), RunError> {
        let total = self.job.total();
        let say = |text: String| {
            if hooks.quiet {
                Ok(())
            } else {
                console::eprint(&text)
            }
        };
        say(format!(
            "{}\nmemory: {}\n",
            self.job.banner(self.dir.path()),
            memory.describe()
        ))?;
        let limit = self.job.config().common().max_minutes * 60.0;
        let start = Instant::now();
        let progress = Progress::new(total, self.job.trainer().step, hooks.quiet);
        while self.job.trainer().step < total {
            let out_of_time = limit > 0.0 && start.elapsed().as_secs_f64() >= limit;
            // In a data-parallel run this rank (0) decides for all: the followers ask the
            // same question at the same point ([`follow`]).
            if self
                .job
                .trainer()
                .agree(out_of_time)
                .map_err(train_failed)?
            {
                break;
            }
            if hooks.interrupted.as_mut().is_some_and(|stop| stop()) {
                progress.finish();
                if self.checkpoint_step != self.job.trainer().step {
                    self.save_checkpoint()?;
                }
                return Err(RunError::Interrupted {
                    dir: self.dir.path().to_path_buf(),
                    step: self.checkpoint_step,
                    unit: self.job.unit(),
                });
            }
            let t0 = Instant::now();
            let outcome = self.job.trainer_mut().step().map_err(|e| {
                progress.finish();
                dir::training_error(e, self.job.unit(), self.checkpoint_step, self.dir.path())
            })?;
            let seconds = t0.elapsed().as_secs_f64();
            self.train_seconds += seconds;
            if let Some(g) = &outcome.gradient {
                self.train_units += g.units as u64;
            }
            self.interval.add(&outcome, seconds);
            let step = self.job.trainer().step;
            progress.tick(step);
            let due = self.job.due(step, total);
            if due.log {
                let logged = self.record(due.evaluate)?;
                progress.note(&logged)?;
            }
            if due.checkpoint {
                self.save_checkpoint()?;
            }
        }
        progress.finish();
        if self.checkpoint_step != self.job.trainer().step {
            self.save_checkpoint()?;
        }
        let figures = self.job.finish(
            self.dir.path(),
            self.train_seconds,
            self.train_units,
            &self.records,
        )?;
        if hooks.quiet {
            return Ok(());
        }
        console::print(&figures)?;
        match memory::peak() {
            Some(peak) => say(format!(
                "memory: peak {} (estimated {})\n",
                memory::size(peak),
                memory::size(memory.total())
            )),
            None => Ok(()),
        }
    }

    /// Appends the interval's record to `metrics.jsonl` and starts the next interval.
    fn record(&mut self, evaluate: bool) -> Result<Logged, RunError> {
        let logged = self.job.record(&self.interval, evaluate)?;
        history::append(&self.metrics, "metrics-append", &logged.record)?;
        self.interval.reset(self.job.keeps_changed());
        self.records.push(logged.record.clone());
        Ok(logged)
    }

    /// Writes the trainer's checkpoint with the configuration, the open interval, the
    /// training seconds and units so far and the number of records logged (atomically: a
    /// crash leaves the previous checkpoint). The history is flushed to disk first, so that
    /// even after a power loss no checkpoint counts records the disk lost.
    fn save_checkpoint(&mut self) -> Result<(), RunError> {
        if let Ok(file) = OpenOptions::new().append(true).open(&self.metrics) {
            file.sync_data()
                .map_err(|e| run_error(format!("cannot write {}: {e}", self.metrics.display())))?;
        }
        let mut ck: Checkpoint = self
            .job
            .trainer()
            .checkpoint()
            .map_err(|e| run_error(e.to_string()))?;
        let meta = [
            (META_CONFIG, self.job.config().to_toml()),
            (META_INTERVAL, self.interval.to_meta()),
            (META_SECONDS, format!("{:?}", self.train_seconds)),
            (META_UNITS, self.train_units.to_string()),
            (META_RECORDS, self.records.len().to_string()),
        ];
        for (key, value) in meta {
            ck.metadata.insert(key.into(), value);
        }
        let path = dir::checkpoint_path(self.dir.path());
        let bytes = ck
            .to_bytes()
            .map_err(|e| run_error(format!("cannot write {}: {e}", path.display())))?;
        files::replace(&path, "checkpoint", &bytes)?;
        self.checkpoint_step = self.job.trainer().step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_survive_checkpoint_metadata_exactly() {
        let iv = Interval {
            gradient_steps: 3,
            nll: 0.1 + 0.2,
            ctrl_nll: -1.0 / 3.0,
            entropy_steps: 3,
            mean_entropy: std::f64::consts::PI,
            batch_entropy: 1e-300,
            usage: vec![vec![1, 2, 3]],
            changed: Some(0.125),
            e_steps: 2,
            changed_sum: 0.1 + 0.7,
            coverage: Some(2.0 / 3.0),
            units: 7,
            seconds: 0.5,
        };
        assert_eq!(Interval::from_meta(&iv.to_meta()), Some(iv));
    }

    #[test]
    fn intervals_stored_before_the_e_step_means_read_back_with_none() {
        let old = r#"{"gradient_steps":1,"nll":0,"ctrl_nll":0,"entropy_steps":0,"mean_entropy":0,"batch_entropy":0,"usage":[],"changed":null,"units":3,"seconds":0}"#;
        let iv = Interval::from_meta(old).expect("an older interval reads back");
        assert_eq!((iv.e_steps, iv.coverage, iv.units), (0, None, 3));
    }
}
