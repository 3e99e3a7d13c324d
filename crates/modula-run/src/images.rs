//! Image runs (`fashion-mnist`, `mnist-10k`, `cifar-10`): loading the data, their
//! `metrics.jsonl` records and `summary.json`, the ReLU network's timing with the sparse
//! dispatch on and off, and greedy evaluation on both splits.

use std::path::Path;

use modula_em::Task;
use modula_em::models::{ImageModel, MlpInput};
use modula_em::{Algo, DenseMatch, Model, Routes, Target, Trainer};
use modula_modular::ControllerOutput;
use modula_nn::{Checkpoint, Ctx, StoredTensor};
use modula_sparse::SparseBackend;
use modula_tasks::{ImageData, ImageEval, ImageTask, Split};

use crate::config::{ImageRun, RunConfig};
use crate::dir::{CHECKPOINT_FILE, CONFIG_FILE, DeviceInfo, METRICS_FILE, SUMMARY_FILE};
use crate::driver::{Due, Interval, Job, Logged};
use crate::error::{RunError, run_error};
use crate::files;
pub use crate::records::{EvalPoint, ImageRecord, ImageSummary};

/// Training images per forward pass when a converted run's EM table is initialised.
const INIT_CHUNK: usize = 500;

/// Rounds of [`ImageTask::time_dispatch`] at the end of a ReLU network's run.
const TIMING_ROUNDS: usize = 3;

/// Loads the data of `run`.
///
/// # Errors
/// A run error naming the files and how to fetch them.
pub fn load_data(run: &ImageRun) -> Result<ImageData, RunError> {
    ImageData::load(&run.task_name, &run.task).map_err(run_error)
}

/// An image run: its configuration, device and trainer.
pub struct ImageJob<B: SparseBackend> {
    cfg: RunConfig,
    device: DeviceInfo,
    /// The trainer.
    pub trainer: Trainer<B, ImageTask<B>>,
}

impl<B: SparseBackend> ImageJob<B> {
    /// Builds the trainer of `run` on `backend` over its loaded `data` (fresh parameters from
    /// the seed; a valid configuration).
    pub fn new(backend: B, device: DeviceInfo, run: &ImageRun, data: ImageData) -> Self {
        let trainer = ImageTask::trainer(backend, data, &run.model, &run.train, run.seed);
        ImageJob {
            cfg: RunConfig::Image(run.clone()),
            device,
            trainer,
        }
    }

    /// Starts this (fresh) run from `initial`'s tensors instead of its seeded
    /// initialisation: each names a parameter and replaces it, and for an EM run every
    /// training image's stored assignment becomes the greedy selection of the network so
    /// initialised (rather than a random one).
    ///
    /// # Errors
    /// A run error naming a tensor that is not a parameter of this network or has another
    /// shape, or a device failure.
    pub fn initialise(&mut self, initial: &Checkpoint) -> Result<(), RunError> {
        let t = &mut self.trainer;
        let names: Vec<String> = t
            .params
            .ids()
            .map(|id| t.params.name(id).to_string())
            .collect();
        if let Some((name, _)) = initial.iter().find(|(n, _)| !names.iter().any(|p| p == n)) {
            return Err(run_error(format!(
                "the initial tensors name `{name}`, which is not a parameter of this network"
            )));
        }
        let fail = |e: modula_em::TrainError| run_error(format!("cannot initialise the run: {e}"));
        let mut ck = t.checkpoint().map_err(fail)?;
        for (name, tensor) in initial.iter() {
            ck.insert(name, tensor.clone());
        }
        t.restore(&ck).map_err(fail)?;
        if t.algo() != Algo::Em {
            return Ok(());
        }
        let shapes = t.model.layer_shapes();
        let train = &t.task.data.train;
        let mut tables: Vec<Vec<u16>> = vec![Vec::new(); shapes.len()];
        let positions: Vec<usize> = (0..t.task.table_rows()).collect();
        for chunk in positions.chunks(INIT_CHUNK) {
            let (x, labels) = images(&t.backend, train, chunk);
            let input = MlpInput {
                x,
                target: Target::Classes(labels),
            };
            let b = &t.backend;
            let mut greedy = |_: usize, out: &ControllerOutput<B>| out.greedy(b);
            let out = t
                .model
                .forward(
                    b,
                    &t.params,
                    &input,
                    Routes::Chosen(&mut greedy),
                    false,
                    &mut Ctx::eval(),
                )
                .map_err(device_error)?;
            for (table, sel) in tables.iter_mut().zip(&out.selections) {
                table.extend(sel.as_slice().iter().map(|&a| a as u16));
            }
        }
        for (l, (table, (_, k))) in tables.into_iter().zip(shapes).enumerate() {
            ck.insert(
                format!("em.assignments.{l}"),
                StoredTensor::u16(vec![positions.len(), k], table),
            );
        }
        t.restore(&ck).map_err(fail)
    }

    /// The run's configuration.
    pub fn run(&self) -> &ImageRun {
        match &self.cfg {
            RunConfig::Image(r) => r,
            _ => unreachable!("an image job holds an image configuration"),
        }
    }

    /// Greedy evaluation on `split`.
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn evaluate(&self, split: Split) -> Result<ImageEval, RunError> {
        let t = &self.trainer;
        t.task
            .evaluate(&t.backend, &t.model, &t.params, split)
            .map_err(|e| run_error(format!("evaluation failed: {e}")))
    }

    /// The ReLU network's layer passes since the last call: how many took the sparse products,
    /// and all of them (`None` for the convolutional network).
    fn take_passes(&self) -> Option<[u64; 2]> {
        match &self.trainer.model {
            ImageModel::Mlp(n) => {
                let (sparse, all) = n.take_path_counts();
                Some([sparse, all])
            }
            ImageModel::Conv(_) | ImageModel::Groups(_) => None,
        }
    }

    fn epoch(&self) -> f64 {
        let per_epoch = self.trainer.task.steps_per_epoch();
        self.trainer.step as f64 / per_epoch as f64
    }

    /// The summary's figures: greedy evaluations of the whole training and test sets, and for
    /// the ReLU network the timing of the sparse dispatch (`train.timing_batches`), given the
    /// training seconds and units so far and the records logged.
    ///
    /// # Errors
    /// A failed evaluation.
    pub fn summary(
        &self,
        train_seconds: f64,
        train_units: u64,
        records: &[serde_json::Value],
    ) -> Result<ImageSummary, RunError> {
        let (r, t) = (self.run(), &self.trainer);
        let train = self.evaluate(Split::Train(0))?;
        let test = self.evaluate(Split::Test)?;
        let records: Vec<ImageRecord> = records
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        let passes = records
            .iter()
            .filter_map(|r| r.sparse_passes)
            .fold([0u64; 2], |a, p| [a[0] + p[0], a[1] + p[1]]);
        let (timing, ideal_saving) = match &t.model {
            ImageModel::Mlp(net) if r.train.timing_batches > 0 => {
                let timing = t
                    .task
                    .time_dispatch(
                        &t.backend,
                        net,
                        &t.params,
                        r.train.timing_batches,
                        TIMING_ROUNDS,
                    )
                    .map_err(|e| run_error(format!("timing failed: {e}")))?;
                let density: Vec<f64> = test.zero_fraction.iter().map(|z| 1.0 - z).collect();
                (Some(timing), Some(net.ideal_saving(&density)))
            }
            _ => (None, None),
        };
        let conv = match &t.model {
            ImageModel::Conv(n) => Some(n),
            ImageModel::Mlp(_) | ImageModel::Groups(_) => None,
        };
        let mlp = matches!(t.model, ImageModel::Mlp(_));
        let shape = t
            .model
            .layer_shapes()
            .first()
            .copied()
            .filter(|_| r.train.algo != Algo::Dense);
        let flops = t.model.flops_per_image();
        Ok(ImageSummary {
            task: r.task_name.clone(),
            model: match &t.model {
                ImageModel::Conv(_) => "conv",
                ImageModel::Mlp(_) => "mlp",
                ImageModel::Groups(_) => "groups",
            }
            .into(),
            algo: r.train.algo.name().into(),
            dense_match: (r.train.algo == Algo::Dense && conv.is_some()).then(|| {
                match r.train.dense_match {
                    DenseMatch::Compute => "compute",
                    DenseMatch::Params => "params",
                }
                .to_string()
            }),
            name: r.name(),
            modules: shape.map(|s| s.0),
            k: shape.map(|s| s.1),
            channels: conv.map(|n| n.plan.layers.iter().map(|l| l.1).collect()),
            hidden: conv.is_none().then(|| r.model.hidden.clone()),
            l1_activations: if mlp { r.model.l1_activations } else { 0.0 },
            l1_weights: if mlp { r.model.l1_weights } else { 0.0 },
            l1_groups: if mlp { r.model.l1_groups } else { 0.0 },
            l1_group_size: (mlp && r.model.l1_groups > 0.0).then_some(r.model.l1_group_size),
            sparse_dispatch: mlp.then_some(r.model.sparse_dispatch),
            finished: t.step >= self.total(),
            epochs: self.epoch(),
            steps: t.step,
            train_examples: t.task.data.train.labels.len(),
            test_examples: t.task.data.test.labels.len(),
            train_seconds,
            epoch_seconds: epoch_seconds(&records),
            images_per_s: train_units as f64 / train_seconds.max(1e-9),
            parameters: t.params.num_scalars(&t.backend),
            flops_per_image: flops,
            e_step: (r.train.algo == Algo::Em).then_some([r.train.samples, r.train.e_every]),
            flops_per_trained_image: r.train.flops_per_trained_image(flops),
            train_accuracy: train.accuracy,
            train_nll: train.nll,
            test_accuracy: test.accuracy,
            test_nll: test.nll,
            gap: train.accuracy - test.accuracy,
            effective_modules: test.effective_modules.filter(|_| shape.is_some()),
            test_usage: test.usage,
            class_usage: test.class_usage,
            class_names: t.task.data.class_names.clone(),
            zero_fraction: test.zero_fraction,
            block_zero_fraction: test.block_zero_fraction,
            sparse_share: (passes[1] > 0).then(|| passes[0] as f64 / passes[1] as f64),
            timing,
            ideal_saving,
            seed: r.seed,
            threads: r.threads,
            device: self.device.clone(),
        })
    }
}

/// The training seconds of every whole epoch: the records' interval seconds summed up to each
/// record that ends an epoch (every epoch end is logged).
fn epoch_seconds(records: &[ImageRecord]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut sum = 0.0;
    for r in records.iter().filter(|r| r.step > 0) {
        sum += r.seconds;
        if r.epoch.fract() == 0.0 {
            out.push(sum);
            sum = 0.0;
        }
    }
    out
}

impl<B: SparseBackend> Job<B> for ImageJob<B> {
    type Task = ImageTask<B>;

    fn trainer(&self) -> &Trainer<B, ImageTask<B>> {
        &self.trainer
    }

    fn trainer_mut(&mut self) -> &mut Trainer<B, ImageTask<B>> {
        &mut self.trainer
    }

    fn config(&self) -> &RunConfig {
        &self.cfg
    }

    fn total(&self) -> u64 {
        let train = &self.run().train;
        let epochs = self.trainer.task.steps_per_epoch() * train.epochs as u64;
        match train.steps {
            0 => epochs,
            s => epochs.min(s as u64),
        }
    }

    fn due(&self, step: u64, total: u64) -> Due {
        let train = &self.run().train;
        let epoch_end = step.is_multiple_of(self.trainer.task.steps_per_epoch());
        let periodic = match train.eval_every {
            0 => epoch_end,
            every => step.is_multiple_of(every as u64),
        };
        let evaluate = periodic || step == total;
        Due {
            // Every epoch end is logged, for the summary's seconds per epoch.
            log: step.is_multiple_of(train.log_every as u64) || evaluate || epoch_end,
            evaluate,
            checkpoint: step.is_multiple_of(train.checkpoint_every as u64) || epoch_end,
        }
    }

    fn initial_record(&self) -> bool {
        true
    }

    fn keeps_changed(&self) -> bool {
        true
    }

    fn unit(&self) -> &'static str {
        "step"
    }

    fn banner(&self, dir: &Path) -> String {
        let (r, t) = (self.run(), &self.trainer);
        format!(
            "modula train: {} on {}, seed {}, {}, {} epochs of {} steps ({} training and {} test images), {} parameters, {:.1} MFLOP/image; run directory {}",
            r.name(),
            r.task_name,
            r.seed,
            self.device.describe(r.threads),
            r.train.epochs,
            t.task.steps_per_epoch(),
            t.task.data.train.labels.len(),
            t.task.data.test.labels.len(),
            t.params.num_scalars(&t.backend),
            t.model.flops_per_image() as f64 / 1e6,
            dir.display()
        )
    }

    fn record(&mut self, iv: &Interval, evaluate: bool) -> Result<Logged, RunError> {
        // The training's layer passes, before the evaluation adds its own (which are dropped).
        let sparse_passes = self.take_passes();
        let eval = if evaluate {
            let train = self.evaluate(Split::Train(self.run().train.eval_train_examples))?;
            let test = self.evaluate(Split::Test)?;
            self.take_passes();
            Some(EvalPoint {
                train_accuracy: train.accuracy,
                train_nll: train.nll,
                test_accuracy: test.accuracy,
                test_nll: test.nll,
                effective_modules: test.effective_modules,
                zero_fraction: test.zero_fraction,
                block_zero_fraction: test.block_zero_fraction,
            })
        } else {
            None
        };
        let r = ImageRecord {
            step: self.trainer.step,
            epoch: self.epoch(),
            train_loss: Interval::mean(iv.nll, iv.gradient_steps),
            ctrl_nll: Interval::mean(iv.ctrl_nll, iv.gradient_steps),
            controller_perplexity: Interval::mean(iv.mean_entropy, iv.entropy_steps).map(f64::exp),
            usage: iv.usage.clone(),
            changed: iv.changed,
            examples_per_s: iv.rate(),
            seconds: iv.seconds,
            sparse_passes: sparse_passes.filter(|p| p[1] > 0),
            eval,
        };
        let loss = r.train_loss.map_or("-".to_string(), |v| format!("{v:.3}"));
        let acc = r.eval.as_ref().map_or(String::new(), |e| {
            format!(
                ", train acc {:.4}, test acc {:.4}",
                e.train_accuracy, e.test_accuracy
            )
        });
        Ok(Logged {
            short: format!("loss {loss}{acc}"),
            line: format!(
                "step {}, epoch {:.2}: loss {loss}{acc}, {:.0} images/s",
                r.step, r.epoch, r.examples_per_s
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
        let s = self.summary(train_seconds, train_units, records)?;
        let json = serde_json::to_string_pretty(&s).expect("the summary serialises");
        files::replace(&dir.join(SUMMARY_FILE), "summary", (json + "\n").as_bytes())?;
        let mut names: Vec<String> = [CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE]
            .map(String::from)
            .to_vec();
        names.extend(plots(dir, &s, records)?);
        let state = if s.finished {
            "finished".to_string()
        } else {
            format!(
                "stopped at step {}; continue with `modula train --resume {}`",
                s.steps,
                dir.display()
            )
        };
        let sparsity = s
            .zero_fraction
            .iter()
            .zip(&s.block_zero_fraction)
            .map(|(z, b)| format!("{z:.3}/{b:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        let timing = s.timing.as_ref().map_or(String::new(), |t| {
            format!(
                "\nper epoch, sparse dispatch on/off: training {:.2}/{:.2} s, inference {:.2}/{:.2} s ({:.0}% of layer passes sparse; ideal saving {:.0}%)",
                t.train_s_per_epoch_sparse,
                t.train_s_per_epoch_dense,
                t.infer_s_per_epoch_sparse,
                t.infer_s_per_epoch_dense,
                100.0 * t.sparse_share,
                100.0 * s.ideal_saving.unwrap_or(0.0)
            )
        });
        Ok(format!(
            "{}: {:.2} epochs, {} steps, {:.0} images/s ({state})\ntrain accuracy {:.4}, test accuracy {:.4} (gap {:.4}), test NLL {:.4}, {} parameters, {:.2} MFLOP/image{}\nzero / all-zero-block fraction per hidden layer (test): {sparsity}{timing}\nrun directory: {}\n  {}\n",
            s.name,
            s.epochs,
            s.steps,
            s.images_per_s,
            s.train_accuracy,
            s.test_accuracy,
            s.gap,
            s.test_nll,
            s.parameters,
            s.flops_per_image as f64 / 1e6,
            s.effective_modules
                .map_or(String::new(), |e| format!(", {e:.2} effective modules")),
            dir.display(),
            names.join(", ")
        ))
    }
}

/// The accuracy curves and the class-by-module heat map of an image run (none without the
/// `plots` feature).
fn plots(
    dir: &Path,
    summary: &ImageSummary,
    records: &[serde_json::Value],
) -> Result<Vec<String>, RunError> {
    #[cfg(feature = "plots")]
    {
        let records: Vec<ImageRecord> = records
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        let label = summary.name.clone();
        let mut names = crate::plot::images::accuracy(dir, &[(label, records)])
            .map_err(|e| run_error(format!("cannot draw the plots: {e}")))?;
        if summary.modules.is_some() {
            names.extend(
                crate::plot::images::class_modules(dir, summary)
                    .map_err(|e| run_error(format!("cannot draw the plots: {e}")))?,
            );
        }
        Ok(names)
    }
    #[cfg(not(feature = "plots"))]
    {
        let _ = (dir, summary, records);
        Ok(Vec::new())
    }
}

/// The images of a set at `positions` as a `[n, pixels]` tensor, and their labels.
pub(crate) fn images<B: SparseBackend>(
    b: &B,
    set: &modula_data::ImageSet,
    positions: &[usize],
) -> (B::Tensor, Vec<u32>) {
    let batch = set.batch(positions);
    (
        b.upload([positions.len(), set.image_bytes()], &batch.pixels),
        batch.labels,
    )
}

/// A device failure during an analysis or a conversion, as a run error.
pub(crate) fn device_error(e: modula_tensor::BackendError) -> RunError {
    run_error(format!("device failure during the analysis: {e}"))
}
