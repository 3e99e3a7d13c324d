//! Language-modelling runs (`ptb`, `text`): loading the corpus, their `metrics.jsonl` records
//! and `summary.json`, and greedy evaluation on the validation and test splits.

use std::path::Path;

use modula_data::{TextCorpus, data_dir};
use modula_em::Trainer;
use modula_em::effective_count;
use modula_tasks::{LmData, LmEval, LmTask};
use modula_tensor::Backend;

use crate::config::{LmRun, RunConfig};
use crate::dir::{DeviceInfo, SUMMARY_FILE};
use crate::driver::{Due, Interval, Job, Logged};
use crate::error::{RunError, run_error};
use crate::{console, files, memory};

pub use crate::records::{LmRecord, LmSummary};

/// `exp` of the entropy of a usage histogram, `None` for an empty one (a dense model).
pub fn usage_perplexity(usage: &[u64]) -> Option<f64> {
    (usage.iter().sum::<u64>() > 0).then(|| effective_count(usage))
}

/// Loads the corpus of `run`: Penn Treebank from its data directory, or the `text` task's
/// corpus, arranged in streams.
///
/// # Errors
/// A run error quoting the data error, which says how to fetch or fix the files.
pub fn load_data(run: &LmRun) -> Result<LmData, RunError> {
    let corpus = match &run.task {
        Some(text) => text.load(),
        None => TextCorpus::load_ptb(&data_dir(run.data_dir.as_deref()).join("ptb")),
    }
    .map_err(|e| run_error(e.to_string()))?;
    LmData::new(corpus, &run.train).map_err(run_error)
}

/// A language-modelling run: its configuration, device and trainer.
pub struct LmJob<B: Backend> {
    cfg: RunConfig,
    device: DeviceInfo,
    /// The trainer.
    pub trainer: Trainer<B, LmTask<B>>,
}

impl<B: Backend> LmJob<B> {
    /// Loads the data of `run`, checks that the model fits in memory ([`memory::check`]) and
    /// builds its trainer on `backend` (fresh parameters from the seed; a valid configuration).
    ///
    /// # Errors
    /// A run error when the data cannot be loaded or the model would not fit.
    pub fn new(backend: B, device: DeviceInfo, run: &LmRun) -> Result<Self, RunError> {
        let data = load_data(run)?;
        memory::check(&RunConfig::Lm(run.clone()), Some(&data))?;
        Ok(Self::with_data(backend, device, run, data))
    }

    /// Builds the trainer of `run` on `backend` with its corpus already loaded.
    pub fn with_data(backend: B, device: DeviceInfo, run: &LmRun, data: LmData) -> Self {
        let trainer = LmTask::trainer(backend, data, &run.model, &run.train, run.seed);
        LmJob {
            cfg: RunConfig::Lm(run.clone()),
            device,
            trainer,
        }
    }

    /// The run's configuration.
    pub fn run(&self) -> &LmRun {
        match &self.cfg {
            RunConfig::Lm(r) => r,
            RunConfig::Toy(_) => unreachable!("a language-modelling job holds its configuration"),
        }
    }

    /// Greedy evaluation of the validation (`valid`) or test split, on at most `max_tokens`
    /// tokens (0: all).
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn evaluate(&self, valid: bool, max_tokens: usize) -> Result<LmEval, RunError> {
        let t = &self.trainer;
        let streams = if valid {
            &t.task.data.valid
        } else {
            &t.task.data.test
        };
        t.task
            .evaluate(
                &t.backend,
                &t.model,
                &t.params,
                streams,
                max_tokens,
                &mut |_, _| {},
            )
            .map_err(|e| run_error(format!("evaluation failed: {e}")))
    }

    fn finished(&self) -> bool {
        self.trainer.task.epoch >= self.run().train.epochs
    }
}

impl<B: Backend> Job<B> for LmJob<B> {
    type Task = LmTask<B>;

    fn trainer(&self) -> &Trainer<B, LmTask<B>> {
        &self.trainer
    }

    fn trainer_mut(&mut self) -> &mut Trainer<B, LmTask<B>> {
        &mut self.trainer
    }

    fn config(&self) -> &RunConfig {
        &self.cfg
    }

    fn total(&self) -> u64 {
        let train = &self.run().train;
        let epochs = self.trainer.task.windows_per_epoch() as u64 * train.epochs as u64;
        match train.steps {
            0 => epochs,
            s => epochs.min(s as u64),
        }
    }

    fn due(&self, step: u64, _total: u64) -> Due {
        let train = &self.run().train;
        let epoch_end = self.trainer.task.window == 0;
        let evaluate = step.is_multiple_of(train.eval_every as u64) || epoch_end;
        Due {
            log: step.is_multiple_of(train.log_every as u64) || evaluate,
            evaluate,
            checkpoint: step.is_multiple_of(train.checkpoint_every as u64) || epoch_end,
        }
    }

    fn initial_record(&self) -> bool {
        true
    }

    fn keeps_changed(&self) -> bool {
        false
    }

    fn unit(&self) -> &'static str {
        "window"
    }

    fn banner(&self, dir: &Path) -> String {
        let (r, t) = (self.run(), &self.trainer);
        format!(
            "modula train: {} on {}, seed {}, {}, {} epochs of {} windows, {} parameters, {:.1} MFLOP/token; run directory {}",
            r.name(),
            r.task_name,
            r.seed,
            self.device.describe(r.threads),
            r.train.epochs,
            t.task.windows_per_epoch(),
            t.params.num_scalars(&t.backend),
            t.model.flops_per_token() as f64 / 1e6,
            dir.display()
        )
    }

    fn record(&mut self, iv: &Interval, evaluate: bool) -> Result<Logged, RunError> {
        let valid_ppl = if evaluate {
            Some(
                self.evaluate(true, self.run().train.eval_tokens)?
                    .perplexity,
            )
        } else {
            None
        };
        let t = &self.trainer;
        let task = &t.task;
        let r = LmRecord {
            step: t.step,
            epoch: task.epoch as f64 + task.window as f64 / task.windows_per_epoch() as f64,
            tokens: task.tokens_seen(),
            train_nll: Interval::mean(iv.nll, iv.gradient_steps),
            ctrl_nll: Interval::mean(iv.ctrl_nll, iv.gradient_steps),
            controller_perplexity: Interval::mean(iv.mean_entropy, iv.entropy_steps).map(f64::exp),
            batch_perplexity: Interval::mean(iv.batch_entropy, iv.entropy_steps).map(f64::exp),
            usage: iv.usage.first().cloned().unwrap_or_default(),
            changed: iv.changed,
            tokens_per_s: iv.rate(),
            valid_ppl,
        };
        let ppl = valid_ppl.map_or(String::new(), |p| format!(", valid ppl {p:.1}"));
        let train_ppl = r.train_nll.unwrap_or(f64::NAN).exp();
        Ok(Logged {
            short: format!("train ppl {train_ppl:.1}{ppl}, {:.0} tok/s", r.tokens_per_s),
            line: format!(
                "window {}, epoch {:.2}: train ppl {train_ppl:.1}{ppl}, {:.0} tokens/s",
                r.step, r.epoch, r.tokens_per_s
            ),
            record: serde_json::to_value(&r).expect("a record serialises"),
        })
    }

    fn finish(
        &self,
        dir: &Path,
        train_seconds: f64,
        train_units: u64,
        _records: &[serde_json::Value],
    ) -> Result<(), RunError> {
        let r = self.run();
        let limit = r.train.eval_tokens;
        let valid = self.evaluate(true, limit)?;
        let test = self.evaluate(false, limit)?;
        let t = &self.trainer;
        let modular = t.model.modular_shape();
        let summary = LmSummary {
            task: r.task_name.clone(),
            algo: r.train.algo.name().into(),
            name: r.name(),
            modules: modular.map(|(m, _)| m),
            k: modular.map(|(_, k)| k),
            hidden: t.model.hidden,
            finished: self.finished(),
            epochs: t.task.epoch,
            steps: t.step,
            tokens_seen: t.task.tokens_seen(),
            train_seconds,
            tokens_per_s: train_units as f64 / train_seconds.max(1e-9),
            parameters: t.params.num_scalars(&t.backend),
            flops_per_token: t.model.flops_per_token(),
            eval_tokens: Some([valid.tokens, test.tokens]),
            valid_ppl: valid.perplexity,
            test_ppl: test.perplexity,
            effective_modules: usage_perplexity(&test.usage),
            test_usage: test.usage.clone(),
            seed: r.seed,
            threads: r.threads,
            device: self.device.clone(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        files::replace(&dir.join(SUMMARY_FILE), "summary", (json + "\n").as_bytes())?;
        let state = if summary.finished {
            "finished".to_string()
        } else {
            format!(
                "stopped at window {}; continue with `modula train --resume {}`",
                t.step,
                dir.display()
            )
        };
        console::print(&format!(
            "{}: {} epochs, {} windows, {:.0} tokens/s ({state})\nvalid ppl {:.2}, test ppl {:.2}, {} parameters, {:.2} MFLOP/token{}\nrun directory: {}\n",
            summary.name,
            summary.epochs,
            summary.steps,
            summary.tokens_per_s,
            summary.valid_ppl,
            summary.test_ppl,
            summary.parameters,
            summary.flops_per_token as f64 / 1e6,
            summary
                .effective_modules
                .map_or(String::new(), |e| format!(", {e:.2} effective modules")),
            dir.display()
        ))
    }
}
