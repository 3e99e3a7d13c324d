//! The memory a run will need, estimated from its configuration before anything is allocated,
//! and what this process may use: a run that cannot fit is refused with the estimate and what
//! to reduce, instead of aborting when an allocation fails halfway through.
//!
//! The estimate adds up, in bytes of `f32` (4) unless said otherwise:
//! - **the program**: the binary, its allocator and threads, a fixed [`PROGRAM`];
//! - **data**: the task's examples as the trainer holds them (toy: inputs, targets and regimes
//!   of both splits; a language model: every split's tokens twice, as a corpus and as streams);
//! - **parameters** `P` (counted by the same rules that build the network), held four times:
//!   the parameters, their gradients and Adam's two moments;
//! - **checkpoint**: writing one serialises parameters and moments into one buffer, `3P`;
//! - **assignment table** (EM): `K` `u16` per training example and modular layer, three times
//!   while a checkpoint is written;
//! - **working memory**: the larger of the checkpoint's host copies of the tensors (`3P`) and
//!   the activations of the largest batch of rows in flight (a gradient step, an E-step's
//!   chunk of candidates, an evaluation) times the floats each row carries. The allocator
//!   keeps freed memory for reuse, and the two phases reuse each other's blocks, but not the
//!   checkpoint's one large buffer, hence the split.
//!
//! Measured against the peak resident memory of release builds on two threads (the test
//! `memory_estimates_match_the_measured_peak` checks the default toy and Penn Treebank runs
//! within 25%): the toy default peaks at 24-25 MiB for an estimate of 27 MiB; the Penn
//! Treebank default (EM, M = 5, K = 1) at 407 MiB for 384 MiB; its dense, REINFORCE and top-k
//! runs at 309-315, 387-391 and 385-405 MiB for 337, 379 and 379 MiB; M = 15, K = 3 at 599-621
//! MiB for 536 MiB.
//!
//! The available memory is `MemAvailable` from `/proc/meminfo`, or the room left under the
//! process's cgroup memory limit when that is smaller.

use std::path::Path;

use modula_em::Algo;
use modula_em::models::ImageNet;
use modula_tasks::images::{EVAL_CHUNK, geometry};
use modula_tasks::{ImageTaskConfig, LmData};

use crate::config::{ImageRun, LmRun, RunConfig, ToyRun};
use crate::error::{RunError, run_error};

/// What the program itself occupies besides the run's own allocations: the binary's pages, the
/// allocator's and the thread pool's own memory, the plots' font and canvases (a toy run's
/// peak: 21-27 MiB in release builds, 29 MiB in test builds).
pub const PROGRAM: u64 = 26 << 20;

/// A run's estimated peak memory, by part.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Each part's name and bytes.
    pub parts: Vec<(&'static str, u64)>,
    /// What to lower to need less, as configuration fields.
    pub knobs: &'static str,
}

impl Estimate {
    /// The total in bytes.
    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }

    /// The total and its parts in words, for messages: `about 384 MiB (program 26 MiB, ...)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(name, b)| format!("{name} {}", size(*b)))
            .collect();
        format!("about {} ({})", size(self.total()), parts.join(", "))
    }
}

/// A size in the unit that reads best.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 40) as f64 {
        format!("{:.1} TiB", b / (1u64 << 40) as f64)
    } else if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// `count` items of `bytes` bytes each, saturating instead of overflowing on absurd sizes.
fn bytes(count: f64, each: f64) -> u64 {
    let b = count * each;
    if b >= u64::MAX as f64 {
        u64::MAX
    } else {
        b as u64
    }
}

/// Estimates the peak memory of training `cfg`; a language model needs its loaded `data`
/// (the vocabulary sets the model's size).
///
/// # Panics
/// If `cfg` is a language model and `data` is `None`.
#[track_caller]
pub fn estimate(cfg: &RunConfig, data: Option<&LmData>) -> Estimate {
    match cfg {
        RunConfig::Toy(run) => toy(run),
        RunConfig::Image(run) => images(run),
        RunConfig::Lm(run) => lm(
            run,
            data.expect("a language model's estimate needs its data"),
        ),
    }
}

/// The parts every task has, for `p` parameters, an assignment table of `table` `u16`
/// entries and `activations` bytes of activations at most.
fn common(p: f64, table: f64, activations: u64) -> Vec<(&'static str, u64)> {
    vec![
        ("program", PROGRAM),
        ("parameters, gradients and Adam's moments", bytes(p, 16.0)),
        ("checkpoint", bytes(p, 12.0)),
        ("assignment table", bytes(table, 6.0)),
        ("working memory", bytes(p, 12.0).max(activations)),
    ]
}

fn toy(run: &ToyRun) -> Estimate {
    let (t, m, tr) = (&run.task, &run.model, &run.train);
    let f = |n: usize| n as f64;
    let p = f(m.parameters(t.dim, 1, tr.algo, tr.dense_match));
    let slots = if tr.algo == Algo::Em {
        f(m.k) * f(m.layers)
    } else {
        0.0
    };
    // The widest rows in flight: a batch (an E-step scores its candidates one batch at a
    // time) or the test split's evaluation, each carrying the input, every hidden layer and
    // the controller's scores per module.
    let rows = f(tr.batch_size).max(f(t.test));
    let width =
        f(t.dim) + f(m.hidden) * f(m.layers - 1) * f(m.modules) + 2.0 * f(m.modules) * f(m.layers);
    let mut parts = common(p, f(t.train) * slots, bytes(rows, 16.0 * width));
    // Inputs and targets on the host and on the device, and each example's regime.
    parts.push((
        "data",
        bytes(f(t.train) + f(t.test), 8.0 * (f(t.dim) + 1.0) + 4.0),
    ));
    Estimate {
        parts,
        knobs: "task.train and task.test (data), model.modules, model.hidden and model.layers (parameters), train.batch_size (activations)",
    }
}

fn images(run: &ImageRun) -> Estimate {
    let (t, m, tr) = (&run.task, &run.model, &run.train);
    let f = |n: usize| n as f64;
    let (input, classes) = geometry(&run.task_name).expect("a validated image task");
    let (train, test) = t.sizes(&run.task_name).expect("a validated image task");
    let (full_train, full_test) = ImageTaskConfig::default()
        .sizes(&run.task_name)
        .expect("a validated image task");
    let pixels: usize = input.iter().product();
    let p = f(m.parameters(input, classes, tr.algo, tr.dense_match));
    let slots = match m.kind {
        ImageNet::Conv if tr.algo == Algo::Em => f(m.k) * f(m.channels.len()),
        ImageNet::Groups if tr.algo == Algo::Em => f(m.k) * f(m.hidden.len()),
        _ => 0.0,
    };
    // The rows in flight: a gradient step's batch (forward and backward, about twice the
    // forward's floats; an E-step scores its candidates one batch at a time, forward only) or
    // an evaluation's chunk.
    let per_row = f(m.floats_per_example(input, classes, tr.algo, tr.dense_match));
    let rows = (2.0 * f(tr.batch_size)).max(f(EVAL_CHUNK));
    let mut parts = common(p, f(train) * slots, bytes(rows, 4.0 * per_row));
    // Loading holds a split's file and its decoded bytes before the run's subset is copied
    // out; the run keeps its subsets' bytes, and the ReLU network's timing uploads its batches.
    let loading = 2.0 * f(full_train + full_test) * f(pixels);
    let kept = f(train + test) * f(pixels);
    let timing = if m.kind == ImageNet::Mlp {
        4.0 * f(tr.timing_batches.min(train / tr.batch_size.max(1))) * f(tr.batch_size) * f(pixels)
    } else {
        0.0
    };
    parts.push(("data", bytes(loading + kept + timing, 1.0)));
    Estimate {
        parts,
        knobs: "model.channels, model.modules and model.hidden (parameters and activations), train.batch_size (activations), task.train_fraction and task.train_examples (the table)",
    }
}

fn lm(run: &LmRun, data: &LmData) -> Estimate {
    let (m, tr) = (&run.model, &run.train);
    let f = |n: usize| n as f64;
    let vocab = f(data.vocab.len());
    let p = f(m.parameters(
        tr.algo,
        tr.dense_match,
        tr.importance_weight,
        data.vocab.len(),
    ));
    let tokens = f(data.train.tokens.len() + data.valid.tokens.len() + data.test.tokens.len());
    let slots = if tr.algo == Algo::Em { f(m.k) } else { 0.0 };
    // A gradient step's rows (streams x steps) each hold logits over the vocabulary, their
    // softmax and its gradient, and the recurrent states and gates kept for the backward pass
    // (the measured slope is 3.7 vocabularies of floats a row); an E-step scores its
    // candidates' rows in chunks of about 2048 rows (whole steps), forward only.
    let window = f(tr.batch_size) * f(tr.bptt);
    let train = window * (3.0 * vocab + 16.0 * f(m.hidden) * f(m.k) + 8.0 * f(m.embed));
    let candidates = f(tr.batch_size) * f(tr.samples);
    let chunk = (2048.0 / candidates).floor().max(1.0) * candidates;
    let e_step = if tr.algo == Algo::Em {
        chunk * (2.0 * vocab + 4.0 * f(m.hidden))
    } else {
        0.0
    };
    let mut parts = common(
        p,
        f(data.train.tokens.len()) * slots,
        bytes(train.max(e_step), 4.0),
    );
    let words: usize = data.vocab.words().iter().map(|w| w.len() + 64).sum();
    parts.push(("data", bytes(tokens, 8.0).saturating_add(words as u64)));
    Estimate {
        parts,
        knobs: "model.hidden, model.embed and model.modules (parameters), train.batch_size, train.bptt and train.samples (activations), task.max_vocab (both)",
    }
}

/// This process's peak resident memory so far (`VmHWM` in `/proc/self/status`), where the
/// system reports it.
pub fn peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The bytes this process may still allocate, and where the figure comes from: the cgroup's
/// limit less its usage when one is set, else `MemAvailable`. `None` where neither can be read.
pub fn available() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kib.saturating_mul(1024), "MemAvailable in /proc/meminfo"))
        });
    let cgroup = cgroup_room().map(|b| (b, "the cgroup memory limit"));
    match (meminfo, cgroup) {
        (Some(a), Some(c)) => Some(if c.0 < a.0 { c } else { a }),
        (a, c) => a.or(c),
    }
}

/// The room under this process's cgroup memory limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: &Path| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        let (dir, limit, usage) = if controllers.is_empty() {
            (
                Path::new("/sys/fs/cgroup").join(path),
                "memory.max",
                "memory.current",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                Path::new("/sys/fs/cgroup/memory").join(path),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // `max` (v2) or a huge number (v1) means no limit.
        if let Some(limit) = read(&dir.join(limit)).filter(|&l| l < 1 << 60) {
            return Some(limit.saturating_sub(read(&dir.join(usage)).unwrap_or(0)));
        }
    }
    None
}

/// Estimates the memory of training `cfg` and refuses a run that cannot fit.
///
/// # Errors
/// A run error with the estimate, what is available and what to reduce.
pub fn check(cfg: &RunConfig, data: Option<&LmData>) -> Result<Estimate, RunError> {
    let estimate = estimate(cfg, data);
    match available() {
        Some((room, source)) if estimate.total() > room => Err(run_error(format!(
            "the run would need {} of memory, but only {} is available ({source}); reduce {}",
            estimate.describe(),
            size(room),
            estimate.knobs
        ))),
        _ => Ok(estimate),
    }
}
