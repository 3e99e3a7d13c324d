//! Introspection of a language-modelling run (`modula inspect --run DIR`): what the modules of a trained language model specialise in.
//! Over the test (or validation) split with greedy selections, it counts for each module the
//! words read at the positions routed to it and the words just before them, and reports those
//! most over-represented (lift = P(word | module) / P(word)), a module-by-word heat map and
//! the module-usage histogram.

use std::collections::BTreeMap;
use std::path::PathBuf;

use modula_tensor::Backend;
use serde::Serialize;

use crate::classes::{ClassLift, class_lifts};
use crate::config::RunConfig;
use crate::dir::{self, DeviceInfo, RunDir};
use crate::error::{RunError, run_error};
use crate::lm::{LmJob, usage_perplexity};
use crate::plot::lm::{self as lm_plot, Heat};
use crate::{console, files};

/// Words always shown in the heat map: sentence starts, numbers, money and function words.
const PROBES: [&str; 10] = ["<eos>", "N", "$", "the", "a", "of", "to", "in", "and", "'s"];

/// What `modula inspect` routes and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectOptions {
    /// Route the validation split instead of the test split.
    pub valid: bool,
    /// Over-represented words listed per module.
    pub top: usize,
    /// Only words seen at least this often in the split are ranked.
    pub min_count: u32,
    /// Where to write inspect.md, inspect.json and the figures.
    pub out: PathBuf,
}

/// One over-represented word of a module.
#[derive(Clone, Debug, Serialize)]
pub struct Lift {
    /// The word.
    pub word: String,
    /// `P(word | module) / P(word)`.
    pub lift: f64,
    /// Fraction of the word's positions routed to the module.
    pub share: f64,
    /// Positions of the module reading this word.
    pub count: u32,
}

/// What `inspect.json` holds for one module.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleReport {
    /// The module's index.
    pub module: usize,
    /// Fraction of positions routed to it.
    pub share: f64,
    /// Words read at its positions, most over-represented first.
    pub words: Vec<Lift>,
    /// Words just before its positions (the context), most over-represented first.
    pub previous: Vec<Lift>,
    /// Each word class's lift among the words read at its positions.
    pub classes: Vec<ClassLift>,
    /// Each word class's lift among the words just before its positions (a previous
    /// `<eos>` marks a sentence start).
    pub previous_classes: Vec<ClassLift>,
}

/// `inspect.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The split routed.
    pub split: String,
    /// Positions routed.
    pub positions: u64,
    /// (position, slot) pairs per module.
    pub usage: Vec<u64>,
    /// `exp` of the usage entropy (1 means collapse onto one module).
    pub effective_modules: Option<f64>,
    /// Per module.
    pub modules: Vec<ModuleReport>,
}

/// Counts of words per module.
struct Counts {
    total: Vec<u32>,
    per_module: Vec<Vec<u32>>,
}

impl Counts {
    fn new(modules: usize, vocab: usize) -> Self {
        Counts {
            total: vec![0; vocab],
            per_module: vec![vec![0; vocab]; modules],
        }
    }

    fn ranked(&self, m: usize, words: &[String], top: usize, min_count: u32) -> Vec<Lift> {
        let n: f64 = self.total.iter().map(|&c| c as f64).sum();
        let n_m: f64 = self.per_module[m].iter().map(|&c| c as f64).sum();
        if n_m == 0.0 {
            return Vec::new();
        }
        let mut lifts: Vec<Lift> = (0..self.total.len())
            .filter(|&w| self.total[w] >= min_count && self.per_module[m][w] > 0)
            .map(|w| {
                let c = self.per_module[m][w];
                Lift {
                    word: words[w].clone(),
                    lift: (c as f64 / n_m) / (self.total[w] as f64 / n),
                    share: c as f64 / self.total[w] as f64,
                    count: c,
                }
            })
            .collect();
        // Ties (common when routing follows the word read) go to the more frequent word.
        lifts.sort_by(|a, b| {
            b.lift
                .total_cmp(&a.lift)
                .then(b.count.cmp(&a.count))
                .then(a.word.cmp(&b.word))
        });
        lifts.truncate(top);
        lifts
    }
}

/// Inspects the run in `run_dir` (configuration `cfg`) on `backend`: restores its checkpoint,
/// routes the chosen split greedily, writes `inspect.md`, `inspect.json` and the figures into
/// `options.out` and prints the markdown.
///
/// # Errors
/// A run error for a toy or dense run, unreadable data or checkpoint, or a failed write.
pub fn inspect<B: Backend>(
    backend: B,
    device: DeviceInfo,
    cfg: &RunConfig,
    run_dir: &std::path::Path,
    options: &InspectOptions,
) -> Result<(), RunError> {
    let RunConfig::Lm(run) = cfg else {
        return Err(run_error(format!(
            "{} is a run of the {} task; `modula inspect` analyses language-modelling runs (ptb, text), whose modules read words",
            run_dir.display(),
            cfg.common().task_name
        )));
    };
    let mut job = LmJob::new(backend, device, run)?;
    let ck = dir::read_checkpoint(run_dir)?;
    job.trainer
        .restore(&ck)
        .map_err(|e| run_error(e.to_string()))?;
    let trainer = &job.trainer;
    {
        let args = options;
        let data = &trainer.task.data;
        let Some((modules, _)) = trainer.model.modular_shape() else {
            return Err(run_error(format!(
                "{} is a dense model: it has no modules to inspect",
                run_dir.display()
            )));
        };
        let vocab = data.vocab.len();
        let words = data.vocab.words().to_vec();
        let (streams, split) = if args.valid {
            (&data.valid, "valid")
        } else {
            (&data.test, "test")
        };
        let (mut read, mut before) = (Counts::new(modules, vocab), Counts::new(modules, vocab));
        let mut last: Vec<Option<u32>> = vec![None; streams.batch];
        let mut positions = 0u64;
        let eval = trainer
            .task
            .evaluate(
                &trainer.backend,
                &trainer.model,
                &trainer.params,
                streams,
                0,
                &mut |w, selections| {
                    for (t, sel) in selections.iter().enumerate() {
                        for (i, prev) in last.iter_mut().enumerate() {
                            let word = w.inputs[i * w.steps + t] as usize;
                            let mut row: Vec<u32> = sel.row(i).to_vec();
                            row.sort_unstable();
                            row.dedup();
                            read.total[word] += 1;
                            for &m in &row {
                                read.per_module[m as usize][word] += 1;
                            }
                            if let Some(p) = *prev {
                                before.total[p as usize] += 1;
                                for &m in &row {
                                    before.per_module[m as usize][p as usize] += 1;
                                }
                            }
                            *prev = Some(word as u32);
                            positions += 1;
                        }
                    }
                },
            )
            .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
        let module_positions: Vec<u64> = read
            .per_module
            .iter()
            .map(|c| c.iter().map(|&v| v as u64).sum())
            .collect();
        let report = Report {
            split: split.to_string(),
            positions,
            usage: eval.usage.clone(),
            effective_modules: usage_perplexity(&eval.usage),
            modules: (0..modules)
                .map(|m| ModuleReport {
                    module: m,
                    share: module_positions[m] as f64 / positions.max(1) as f64,
                    words: read.ranked(m, &words, args.top, args.min_count),
                    previous: before.ranked(m, &words, args.top, args.min_count),
                    classes: class_lifts(&read.total, &read.per_module[m], &words),
                    previous_classes: class_lifts(&before.total, &before.per_module[m], &words),
                })
                .collect(),
        };
        // The output directory (the run's own by default) is taken like any directory a
        // command writes, and each file replaced atomically.
        let out = RunDir::take(&args.out)?;
        let out = out.path();
        let markdown = markdown(&report);
        files::replace(&out.join("inspect.md"), "inspect", markdown.as_bytes())?;
        let json = serde_json::to_string_pretty(&report).expect("the report serialises");
        files::replace(
            &out.join("inspect.json"),
            "inspect",
            (json + "\n").as_bytes(),
        )?;
        let heat = heat(&report, &read, &data.vocab);
        let mut figures = lm_plot::heatmap(out, &heat).map_err(run_error)?;
        figures.extend(lm_plot::usage_histogram(out, &report.usage).map_err(run_error)?);
        console::print(&format!(
            "{markdown}wrote inspect.md, inspect.json, {} into {}\n",
            figures.join(", "),
            out.display()
        ))
    }
}

fn lifts_cell(lifts: &[Lift]) -> String {
    lifts
        .iter()
        .map(|l| format!("`{}` {:.1}x", l.word, l.lift))
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Module introspection on the {} split: {} positions, greedy selections; effective modules {}.\n\n",
        r.split,
        r.positions,
        r.effective_modules
            .map_or("-".to_string(), |e| format!("{e:.2}"))
    );
    s.push_str("| module | share of positions | words read (lift) | previous word (lift) |\n");
    s.push_str("|---|---|---|---|\n");
    for m in &r.modules {
        s.push_str(&format!(
            "| {} | {:.3} | {} | {} |\n",
            m.module,
            m.share,
            lifts_cell(&m.words),
            lifts_cell(&m.previous)
        ));
    }
    s.push_str("\nWord classes: lift of each class among the words read at a module's positions / among the words just before them (a previous `<eos>` is a sentence start).\n\n");
    let names: Vec<&str> = r.modules.first().map_or(Vec::new(), |m| {
        m.classes.iter().map(|c| c.class.as_str()).collect()
    });
    s.push_str(&format!("| module | {} |\n", names.join(" | ")));
    s.push_str(&format!("|---|{}\n", "---|".repeat(names.len())));
    for m in &r.modules {
        let cells: Vec<String> = m
            .classes
            .iter()
            .zip(&m.previous_classes)
            .map(|(read, prev)| format!("{:.1}x / {:.1}x", read.lift, prev.lift))
            .collect();
        s.push_str(&format!("| {} | {} |\n", m.module, cells.join(" | ")));
    }
    s
}

/// `P(module | word)` for the probe words and each module's two most over-represented words.
fn heat(r: &Report, read: &Counts, vocab: &modula_data::Vocab) -> Heat {
    let mut cols: BTreeMap<String, ()> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let top = r
        .modules
        .iter()
        .flat_map(|m| m.words.iter().take(2).map(|l| l.word.clone()));
    for w in PROBES.iter().map(|w| w.to_string()).chain(top) {
        if vocab.id(&w).is_some() && cols.insert(w.clone(), ()).is_none() {
            order.push(w);
        }
    }
    let values = (0..r.modules.len())
        .map(|m| {
            order
                .iter()
                .map(|w| {
                    let id = vocab.id(w).expect("filtered above") as usize;
                    read.per_module[m][id] as f64 / read.total[id].max(1) as f64
                })
                .collect()
        })
        .collect();
    Heat {
        rows: (0..r.modules.len())
            .map(|m| format!("module {m}"))
            .collect(),
        cols: order,
        values,
        caption: format!("P(module | word read), {} split", r.split),
    }
}
