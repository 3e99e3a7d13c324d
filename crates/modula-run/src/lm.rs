//! Language-modelling runs (`ptb`, `text`): loading the corpus, their `metrics.jsonl` records
//! and `summary.json`, and greedy evaluation on the validation and test splits.

use std::path::Path;

use modula_data::{TextCorpus, data_dir};
use modula_em::Trainer;
use modula_em::effective_count;
use modula_tasks::{LmData, LmEval, LmFiltered, LmTask};
use modula_tensor::Backend;

use crate::config::{LmRun, RunConfig};
use crate::dir::{DeviceInfo, SUMMARY_FILE};
use crate::driver::{Due, Interval, Job, Logged};
use crate::error::{RunError, run_error};
use crate::{files, memory};

pub use crate::records::{EpochEnd, Filtered, LmRecord, LmSummary};

/// The random stream of upcycling's noise (apart from the streams training draws from).
const UPCYCLE_STREAM: u64 = 1 << 58;

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
    .map_err(|e| RunError::Data(e.to_string()))?;
    LmData::new(corpus, &run.train).map_err(RunError::Data)
}

/// A language-modelling run: its configuration, device and trainer.
pub struct LmJob<B: Backend> {
    cfg: RunConfig,
    device: DeviceInfo,
    /// The trainer.
    pub trainer: Trainer<B, LmTask<B>>,
    /// The evaluations of the last epoch end and the step they were made at, which the
    /// summary reuses when the run stops there (evaluating the filtered mixture is costly).
    epoch_end: Option<(u64, Evaluations)>,
}

/// The held-out evaluations a summary needs.
#[derive(Clone, Debug)]
struct Evaluations {
    valid: LmEval,
    test: LmEval,
    filtered: Option<Filtered>,
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
            epoch_end: None,
        }
    }

    /// The run's configuration.
    pub fn run(&self) -> &LmRun {
        match &self.cfg {
            RunConfig::Lm(r) => r,
            _ => unreachable!("a language-modelling job holds its configuration"),
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

    /// The filtered-mixture and posterior evaluations of the validation (`valid`) or test
    /// split, on at most `max_tokens` tokens (0: all); `None` for models without a
    /// controller-routed modular cell. For `K > 1` the mixture draws `train.samples`
    /// selections per step from a generator seeded by the run's seed, so that every
    /// evaluation of the same parameters gives the same figure.
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn evaluate_filtered(
        &self,
        valid: bool,
        max_tokens: usize,
    ) -> Result<Option<LmFiltered>, RunError> {
        let t = &self.trainer;
        let streams = if valid {
            &t.task.data.valid
        } else {
            &t.task.data.test
        };
        let r = self.run();
        t.task
            .evaluate_filtered(
                &t.backend,
                &t.model,
                &t.params,
                streams,
                max_tokens,
                r.train.samples,
                r.seed,
            )
            .map_err(|e| run_error(format!("evaluation failed: {e}")))
    }

    /// Both splits' filtered-mixture and posterior perplexities (`None` for models without a
    /// controller-routed modular cell).
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn filtered(&self, max_tokens: usize) -> Result<Option<Filtered>, RunError> {
        let (Some(valid), Some(test)) = (
            self.evaluate_filtered(true, max_tokens)?,
            self.evaluate_filtered(false, max_tokens)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Filtered {
            valid_ppl_mixture: valid.mixture_ppl,
            test_ppl_mixture: test.mixture_ppl,
            valid_ppl_posterior: valid.posterior_ppl,
            test_ppl_posterior: test.posterior_ppl,
            mixture_routes: test.routes,
        }))
    }

    /// Upcycling: when `train.init_from` names a dense run, initialises this (fresh) run's
    /// modules, embedding and softmax from that run's checkpoint, with noise drawn from the
    /// run's seed (see `modula_tasks::upcycle`).
    ///
    /// # Errors
    /// A run error naming the dense run when its checkpoint cannot be read or does not fit.
    pub fn upcycle(&mut self) -> Result<(), RunError> {
        let train = &self.run().train;
        if train.init_from.as_os_str().is_empty() {
            return Ok(());
        }
        let (from, noise, seed) = (train.init_from.clone(), train.init_noise, self.run().seed);
        let ck = crate::dir::read_checkpoint(&from)?;
        let t = &mut self.trainer;
        let (modules, _) = t
            .model
            .modular_shape()
            .expect("validation keeps upcycling to modular runs");
        let mut rng = modula_em::stream(seed, UPCYCLE_STREAM);
        modula_tasks::upcycle(&t.backend, &mut t.params, &ck, modules, noise, &mut rng).map_err(|e| {
            run_error(format!(
                "cannot upcycle from {}: {e}; name the run directory of a dense run with --dense-match compute and this run's embed and hidden sizes",
                from.display()
            ))
        })
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
        let limit = self.run().train.eval_tokens;
        let valid = if evaluate {
            Some(self.evaluate(true, limit)?)
        } else {
            None
        };
        let valid_ppl = valid.as_ref().map(|v| v.perplexity);
        // An epoch just ended: the test split's greedy figures and the filtered evaluations.
        let epoch_end = match valid {
            Some(valid) if self.trainer.task.window == 0 && self.trainer.step > 0 => {
                let evaluations = Evaluations {
                    valid,
                    test: self.evaluate(false, limit)?,
                    filtered: self.filtered(limit)?,
                };
                let end = EpochEnd {
                    test_ppl: evaluations.test.perplexity,
                    effective_modules: usage_perplexity(&evaluations.test.usage),
                    filtered: evaluations.filtered.clone(),
                };
                self.epoch_end = Some((self.trainer.step, evaluations));
                Some(end)
            }
            _ => None,
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
            changed_mean: Interval::mean(iv.changed_sum, iv.e_steps),
            coverage: iv.coverage,
            tokens_per_s: iv.rate(),
            valid_ppl,
            epoch_end,
        };
        let mut ppl = valid_ppl.map_or(String::new(), |p| format!(", valid ppl {p:.1}"));
        if let Some(e) = &r.epoch_end {
            ppl.push_str(&format!(", test ppl {:.1}", e.test_ppl));
            if let Some(f) = &e.filtered {
                ppl.push_str(&format!(
                    " (mixture {:.1}, posterior {:.1})",
                    f.test_ppl_mixture, f.test_ppl_posterior
                ));
            }
        }
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
        records: &[serde_json::Value],
    ) -> Result<String, RunError> {
        let r = self.run();
        let limit = r.train.eval_tokens;
        let Evaluations {
            valid,
            test,
            filtered,
        } = match &self.epoch_end {
            Some((step, e)) if *step == self.trainer.step => e.clone(),
            _ => Evaluations {
                valid: self.evaluate(true, limit)?,
                test: self.evaluate(false, limit)?,
                filtered: self.filtered(limit)?,
            },
        };
        let t = &self.trainer;
        let modular = t.model.modular_shape();
        let last_epoch = last_epoch_records(records);
        let k = modular.map_or(1, |(_, k)| k) as f64;
        let summary = LmSummary {
            task: r.task_name.clone(),
            algo: r.train.algo.name().into(),
            dense_match: (r.train.algo == modula_em::Algo::Dense).then(|| {
                match r.train.dense_match {
                    modula_em::DenseMatch::Compute => "compute",
                    modula_em::DenseMatch::Params => "params",
                }
                .to_string()
            }),
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
            filtered,
            // Dense and top-k models have no controller distribution (their logged NLL is 0).
            ctrl_nll_slot: mean_of(&last_epoch, |r| r.ctrl_nll)
                .map(|v| v / k)
                .filter(|_| !modula_em::Model::<B>::table_shapes(&t.model).is_empty()),
            routes_changed: mean_of(&last_epoch, |r| r.changed_mean),
            coverage: records
                .iter()
                .rev()
                .find_map(|r| r.get("coverage").and_then(serde_json::Value::as_f64)),
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
        Ok(format!(
            "{}: {} epochs, {} windows, {:.0} tokens/s ({state})\nvalid ppl {:.2}, test ppl {:.2}{}, {} parameters, {:.2} MFLOP/token{}\nrun directory: {}\n",
            summary.name,
            summary.epochs,
            summary.steps,
            summary.tokens_per_s,
            summary.valid_ppl,
            summary.test_ppl,
            summary.filtered.as_ref().map_or(String::new(), |f| format!(
                " (filtered mixture {:.2} at {} modules per token, posterior {:.2})",
                f.test_ppl_mixture, f.mixture_routes, f.test_ppl_posterior
            )),
            summary.parameters,
            summary.flops_per_token as f64 / 1e6,
            summary
                .effective_modules
                .map_or(String::new(), |e| format!(", {e:.2} effective modules")),
            dir.display()
        ))
    }
}

/// The records of the last epoch a run logged: those after the previous epoch-end record (or
/// all of them when there is none), read back as [`LmRecord`]s.
fn last_epoch_records(records: &[serde_json::Value]) -> Vec<LmRecord> {
    let all: Vec<LmRecord> = records
        .iter()
        .filter_map(|r| serde_json::from_value(r.clone()).ok())
        .collect();
    // The final record is itself an epoch end when the run finished an epoch; the epoch it
    // closes starts after the epoch end before it.
    let ends: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| r.epoch_end.is_some())
        .map(|(i, _)| i)
        .collect();
    let start = match ends.as_slice() {
        [.., before, last] if *last + 1 == all.len() => before + 1,
        [.., last] if *last + 1 < all.len() => last + 1,
        _ => 0,
    };
    all[start..].to_vec()
}

/// The mean of a record field over the records that have it.
fn mean_of(records: &[LmRecord], field: impl Fn(&LmRecord) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = records.iter().filter_map(field).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
