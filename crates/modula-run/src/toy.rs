//! Toy runs: their `metrics.jsonl` records, `summary.json`, plots and evaluation.

use std::path::Path;

use modula_em::Trainer;
use modula_tasks::ToyTask;
use modula_tensor::Backend;

use crate::config::{RunConfig, ToyRun};
use crate::dir::{CHECKPOINT_FILE, CONFIG_FILE, DeviceInfo, METRICS_FILE, SUMMARY_FILE};
use crate::driver::{Due, Interval, Job, Logged};
use crate::error::{RunError, run_error};
use crate::files;
pub use crate::records::{Figures, MetricRecord, Summary};

/// A toy run: its configuration, device and trainer.
pub struct ToyJob<B: Backend> {
    cfg: RunConfig,
    device: DeviceInfo,
    /// The trainer.
    pub trainer: Trainer<B, ToyTask<B>>,
    linear_baseline_mse: f64,
}

impl<B: Backend> ToyJob<B> {
    /// Builds the run of `run` on `backend` (a valid configuration).
    pub fn new(backend: B, device: DeviceInfo, run: &ToyRun) -> Self {
        let trainer = ToyTask::trainer(backend, &run.task, &run.model, &run.train, run.seed);
        let linear_baseline_mse = trainer.task.data.linear_baseline_mse();
        ToyJob {
            cfg: RunConfig::Toy(run.clone()),
            device,
            trainer,
            linear_baseline_mse,
        }
    }

    fn run(&self) -> &ToyRun {
        match &self.cfg {
            RunConfig::Toy(r) => r,
            _ => unreachable!("a toy job holds a toy configuration"),
        }
    }

    /// Greedy evaluation on the test split, with the task's linear baseline.
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn figures(&self) -> Result<Figures, RunError> {
        let t = &self.trainer;
        let eval = t
            .task
            .evaluate(&t.backend, &t.model, &t.params)
            .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
        Ok(Figures::new(&eval, self.linear_baseline_mse))
    }
}

impl<B: Backend> Job<B> for ToyJob<B> {
    type Task = ToyTask<B>;

    fn trainer(&self) -> &Trainer<B, ToyTask<B>> {
        &self.trainer
    }

    fn trainer_mut(&mut self) -> &mut Trainer<B, ToyTask<B>> {
        &mut self.trainer
    }

    fn config(&self) -> &RunConfig {
        &self.cfg
    }

    fn total(&self) -> u64 {
        self.run().train.steps as u64
    }

    fn due(&self, step: u64, total: u64) -> Due {
        let train = &self.run().train;
        let log = step.is_multiple_of(train.log_every as u64) || step == total;
        Due {
            log,
            evaluate: log,
            checkpoint: step.is_multiple_of(train.checkpoint_every as u64) || step == total,
        }
    }

    fn initial_record(&self) -> bool {
        false
    }

    fn keeps_changed(&self) -> bool {
        true
    }

    fn unit(&self) -> &'static str {
        "step"
    }

    fn banner(&self, dir: &Path) -> String {
        let r = self.run();
        format!(
            "modula train: {} on the {} task, seed {}, {}, {} steps; run directory {}",
            r.train.algo.name(),
            r.task_name,
            r.seed,
            self.device.describe(r.threads),
            r.train.steps,
            dir.display()
        )
    }

    fn record(&mut self, iv: &Interval, _evaluate: bool) -> Result<Logged, RunError> {
        let eval = self
            .trainer
            .task
            .evaluate(
                &self.trainer.backend,
                &self.trainer.model,
                &self.trainer.params,
            )
            .map_err(|e| run_error(format!("evaluation failed: {e}")))?;
        let r = MetricRecord {
            step: self.trainer.step,
            task_nll: Interval::mean(iv.nll, iv.gradient_steps),
            ctrl_nll: Interval::mean(iv.ctrl_nll, iv.gradient_steps),
            controller_perplexity: Interval::mean(iv.mean_entropy, iv.entropy_steps).map(f64::exp),
            batch_perplexity: Interval::mean(iv.batch_entropy, iv.entropy_steps).map(f64::exp),
            usage: iv.usage.clone(),
            changed: iv.changed,
            examples_per_s: iv.rate(),
            test_mse: eval.test_mse,
            test_nll: eval.test_nll,
            purity: eval.purity,
            effective_modules: eval.effective_modules,
        };
        let loss = r.task_nll.map_or("-".to_string(), |v| format!("{v:.3}"));
        Ok(Logged {
            short: format!(
                "loss {loss} test MSE {:.4} eff {:.2}",
                r.test_mse, r.effective_modules
            ),
            line: format!(
                "step {}: loss {loss}, test MSE {:.4}, purity {:.3}, effective modules {:.2}, {:.0} examples/s",
                r.step, r.test_mse, r.purity, r.effective_modules, r.examples_per_s
            ),
            record: serde_json::to_value(&r).expect("a record serialises"),
        })
    }

    fn finish(
        &self,
        dir: &Path,
        train_seconds: f64,
        _train_units: u64,
        records: &[serde_json::Value],
    ) -> Result<String, RunError> {
        let r = self.run();
        let t = &self.trainer;
        let summary = Summary {
            task: r.task_name.clone(),
            algo: r.train.algo.name().to_string(),
            steps: t.step,
            seconds: train_seconds,
            seed: r.seed,
            threads: r.threads,
            device: self.device.clone(),
            parameters: t.params.num_scalars(&t.backend),
            figures: self.figures()?,
        };
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        files::replace(&dir.join(SUMMARY_FILE), "summary", (json + "\n").as_bytes())?;
        let records: Vec<MetricRecord> = records
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        let plots = plots(dir, &records, self.linear_baseline_mse)?;
        let mut names = vec![CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        names.extend(plots);
        Ok(format!(
            "{} on the {} task: {} steps in {:.1} s ({}, seed {}, {} parameters)\n{}\nrun directory: {}\n  {}\n",
            summary.algo,
            summary.task,
            summary.steps,
            summary.seconds,
            self.device.describe(summary.threads),
            summary.seed,
            summary.parameters,
            summary.figures.text(),
            dir.display(),
            names.join(", ")
        ))
    }
}

/// The loss, module and usage plots of a toy run (none without the `plots` feature).
fn plots(dir: &Path, records: &[MetricRecord], baseline: f64) -> Result<Vec<String>, RunError> {
    #[cfg(feature = "plots")]
    {
        crate::plot::toy::write_all(dir, records, baseline)
            .map_err(|e| run_error(format!("cannot draw the plots: {e}")))
    }
    #[cfg(not(feature = "plots"))]
    {
        let _ = (dir, records, baseline);
        Ok(Vec::new())
    }
}
