//! The training loop's state: parameters, optimiser, assignment table, schedule and
//! checkpoints. Every random choice of iteration `i` comes from its own stream of the run's
//! seed, so a run resumed from a checkpoint continues exactly as the uninterrupted run would.

use std::collections::BTreeMap;

use modula_nn::{
    Adam, Checkpoint, CheckpointError, Ctx, ExtraTensors, Grads, Optimizer, ParamStore,
    StoredTensor,
};
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::algo::{self, Batch, EStats, StepStats};
use crate::config::{Algo, TrainConfig};
use crate::model::{ModularModel, Target};
use crate::table::AssignmentTable;
use crate::toy::permutation;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The loss became NaN or infinite; parameters were not updated at this step.
    #[error(
        "training diverged at step {step}: the loss is {value}; lower train.lr or set train.grad_clip"
    )]
    Diverged {
        /// The iteration whose loss was not finite.
        step: u64,
        /// The offending loss value.
        value: f64,
    },
    /// The device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A checkpoint does not belong to this run's model or data.
    #[error("checkpoint {path} does not match this run: {problem}")]
    Mismatch {
        /// The checkpoint file.
        path: String,
        /// What differs.
        problem: String,
    },
}

/// Training data resident on the device.
#[derive(Debug)]
pub enum TargetData<B: Backend> {
    /// Real-valued targets `[N, d_out]`.
    Regression(B::Tensor),
    /// Class indices.
    Classes(Vec<u32>),
}

/// The training split on the device: inputs `[N, d_in]` and targets; row `i` has stable index
/// `i`.
#[derive(Debug)]
pub struct TrainData<B: Backend> {
    /// Inputs.
    pub x: B::Tensor,
    /// Targets.
    pub target: TargetData<B>,
}

/// What one iteration did.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// An EM E-step.
    EStep(EStats),
    /// A gradient step (EM's M-step or a baseline's update).
    Gradient(StepStats),
}

/// A training run in memory: parameters, optimiser, assignment table and schedule. Iteration `i`
/// draws its randomness from its own stream of the seed, so a restored run continues exactly.
#[derive(Debug)]
pub struct Trainer<B: Backend, M: ModularModel<B>> {
    /// The backend.
    pub backend: B,
    /// The network.
    pub model: M,
    /// Its parameters.
    pub params: ParamStore<B>,
    /// The optimiser (Adam).
    pub optimizer: Adam<B>,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// The run's seed.
    pub seed: u64,
    /// EM's assignment table (EM only).
    pub table: Option<AssignmentTable>,
    /// REINFORCE's reward baseline.
    pub baseline: Option<f64>,
    /// Iterations completed.
    pub step: u64,
    data: TrainData<B>,
    /// Gradient buffers, reset (not freed) every step.
    grads: Grads<B>,
    examples: usize,
    variance: f32,
    epoch: Option<(u64, Vec<u32>)>,
}

/// Stream ids that keep the run's random choices apart.
pub(crate) const STREAM_TABLE: u64 = 1 << 62;
const STREAM_EPOCH: u64 = 1 << 61;

/// Stream `id` of the ChaCha generator seeded by `seed`.
pub(crate) fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

impl<B: Backend, M: ModularModel<B>> Trainer<B, M> {
    /// A new run. EM's table starts uniformly random from the seed.
    ///
    /// # Panics
    /// If the configuration is invalid (validate it first) or the data has no rows.
    #[track_caller]
    pub fn new(
        backend: B,
        model: M,
        params: ParamStore<B>,
        config: TrainConfig,
        seed: u64,
        data: TrainData<B>,
        variance: f32,
    ) -> Self {
        config.validate().expect("validated configuration");
        let examples = backend.shape(&data.x)[0];
        assert!(examples > 0, "training data has no rows");
        let table = (config.algo == Algo::Em).then(|| {
            AssignmentTable::random(
                examples,
                &model.layer_shapes(),
                &mut stream(seed, STREAM_TABLE),
            )
        });
        let optimizer = Adam::new(config.lr);
        Trainer {
            backend,
            model,
            params,
            optimizer,
            config,
            seed,
            table,
            baseline: None,
            step: 0,
            data,
            grads: Grads::new(),
            examples,
            variance,
            epoch: None,
        }
    }

    /// Variance of the Gaussian output distribution (regression tasks).
    pub fn variance(&self) -> f32 {
        self.variance
    }

    /// The stable indices of the mini-batch of iteration `step`: consecutive slices of a
    /// per-epoch permutation drawn from the seed.
    pub fn batch_indices(&mut self, step: u64) -> Vec<u32> {
        let bs = self.config.batch_size.min(self.examples);
        let per_epoch = (self.examples / bs) as u64;
        let (epoch, j) = (step / per_epoch, (step % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let perm = permutation(self.examples, &mut stream(self.seed, STREAM_EPOCH + epoch));
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        perm[j * bs..(j + 1) * bs].to_vec()
    }

    fn batch(&mut self, step: u64) -> Batch<B> {
        let idx = self.batch_indices(step);
        let b = &self.backend;
        let target = match &self.data.target {
            TargetData::Regression(y) => Target::Regression {
                y: b.gather_rows(y, &idx),
                variance: self.variance,
            },
            TargetData::Classes(c) => Target::Classes(idx.iter().map(|&i| c[i as usize]).collect()),
        };
        Batch {
            x: b.gather_rows(&self.data.x, &idx),
            target,
            idx,
        }
    }

    /// Runs the next iteration: for EM an E-step when `step % e_every == 0`, else an M-step;
    /// for the baselines always their gradient step.
    ///
    /// # Errors
    /// [`TrainError::Diverged`] when the loss is not finite (parameters stay as they were),
    /// or a device failure.
    pub fn step(&mut self) -> Result<StepOutcome, TrainError> {
        let step = self.step;
        let batch = self.batch(step);
        let mut rng = stream(self.seed, step);
        let mut ctx = Ctx {
            train: true,
            rng: stream(self.seed, step | (1 << 60)),
        };
        let b = &self.backend;
        let grads = &mut self.grads;
        grads.reset();
        let stats = match self.config.algo {
            Algo::Em => {
                let table = self.table.as_mut().expect("EM runs keep a table");
                if step.is_multiple_of(self.config.e_every as u64) {
                    let e = algo::e_step(
                        &self.model,
                        b,
                        &self.params,
                        &batch,
                        table,
                        self.config.samples,
                        &mut rng,
                        &mut ctx,
                    )?;
                    self.step += 1;
                    return Ok(StepOutcome::EStep(e));
                }
                algo::m_step(&self.model, b, &self.params, &batch, table, grads, &mut ctx)?
            }
            Algo::Reinforce => {
                let decay = self.config.reinforce_decay;
                algo::reinforce_step(
                    &self.model,
                    b,
                    &self.params,
                    &batch,
                    &mut self.baseline,
                    decay,
                    &mut rng,
                    grads,
                    &mut ctx,
                )?
            }
            Algo::Topk | Algo::Dense => {
                algo::gated_step(&self.model, b, &self.params, &batch, grads, &mut ctx)?
            }
        };
        let loss = stats.task_nll + stats.ctrl_nll;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step, value: loss });
        }
        if self.config.grad_clip > 0.0 {
            grads.clip_norm(b, self.config.grad_clip)?;
        }
        self.optimizer.step(b, &mut self.params, grads);
        self.step += 1;
        Ok(StepOutcome::Gradient(stats))
    }

    /// Everything needed to resume: parameters, Adam's moments and step count, the
    /// assignment table, the reward baseline and the iteration counter.
    ///
    /// # Errors
    /// A device failure while downloading tensors.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let mut ck = Checkpoint::new();
        save_state(
            &mut ck,
            &self.backend,
            &self.params,
            &self.optimizer,
            self.table.as_ref(),
        )?;
        let meta = common_meta(
            self.step,
            self.optimizer.steps(),
            self.seed,
            self.config.algo,
            self.baseline,
        );
        ck.metadata.extend(meta);
        Ok(ck)
    }

    /// Restores the state saved by [`Trainer::checkpoint`].
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when the checkpoint is for another algorithm or model, or a
    /// [`CheckpointError`] naming a missing or malformed tensor.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<(), TrainError> {
        let meta = MetaReader::new(ck, self.config.algo)?;
        let (step, adam_t) = (meta.number("step")?, meta.number("adam_t")?);
        let baseline = meta.baseline()?;
        restore_state(
            &meta,
            &self.backend,
            &mut self.params,
            &mut self.optimizer,
            &mut self.table,
            adam_t,
        )?;
        self.baseline = baseline;
        self.step = step;
        self.epoch = None;
        Ok(())
    }
}

/// The metadata every trainer writes into its checkpoints: counters, seed, algorithm and
/// REINFORCE's baseline (each trainer adds its own keys).
pub(crate) fn common_meta(
    step: u64,
    adam_t: u64,
    seed: u64,
    algo: Algo,
    baseline: Option<f64>,
) -> BTreeMap<String, String> {
    [
        ("step", step.to_string()),
        ("adam_t", adam_t.to_string()),
        ("seed", seed.to_string()),
        ("algo", algo.name().to_string()),
        (
            "baseline",
            baseline.map_or("none".to_string(), |v| format!("{v:?}")),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Reads a checkpoint's metadata back, with errors that name the checkpoint.
pub(crate) struct MetaReader<'c> {
    ck: &'c Checkpoint,
    path: String,
}

impl<'c> MetaReader<'c> {
    /// A reader for `ck`, refusing a checkpoint written by another algorithm than `algo`.
    pub(crate) fn new(ck: &'c Checkpoint, algo: Algo) -> Result<Self, TrainError> {
        let reader = MetaReader {
            ck,
            path: ck.origin().display().to_string(),
        };
        let written = reader.get("algo")?;
        if written != algo.name() {
            return Err(reader.mismatch(format!(
                "it was written by `{written}`, this run uses `{}`",
                algo.name()
            )));
        }
        Ok(reader)
    }

    /// A [`TrainError::Mismatch`] naming the checkpoint.
    pub(crate) fn mismatch(&self, problem: String) -> TrainError {
        TrainError::Mismatch {
            path: self.path.clone(),
            problem,
        }
    }

    fn get(&self, key: &str) -> Result<String, TrainError> {
        self.ck
            .metadata
            .get(key)
            .cloned()
            .ok_or_else(|| self.mismatch(format!("metadata `{key}` is missing")))
    }

    /// The unsigned integer stored under `key`.
    pub(crate) fn number(&self, key: &str) -> Result<u64, TrainError> {
        self.get(key)?
            .parse()
            .map_err(|_| self.mismatch(format!("metadata `{key}` is not a number")))
    }

    /// REINFORCE's baseline, `None` when none was set.
    pub(crate) fn baseline(&self) -> Result<Option<f64>, TrainError> {
        match self.get("baseline")?.as_str() {
            "none" => Ok(None),
            v => v
                .parse::<f64>()
                .map(Some)
                .map_err(|_| self.mismatch("metadata `baseline` is not a number".into())),
        }
    }
}

/// Writes the parameters, Adam's moments and EM's assignment table into `ck` (the state every
/// trainer shares; each adds its own counters as metadata).
pub(crate) fn save_state<B: Backend>(
    ck: &mut Checkpoint,
    b: &B,
    params: &ParamStore<B>,
    optimizer: &Adam<B>,
    table: Option<&AssignmentTable>,
) -> Result<(), TrainError> {
    ck.add_params(b, params)?;
    for (id, mv) in optimizer.moments() {
        let name = params.name(id).to_string();
        for (tag, t) in ["m", "v"].iter().zip(mv) {
            let [r, c] = b.shape(t);
            ck.insert(
                format!("optimizer.{tag}.{name}"),
                StoredTensor::f32(vec![r, c], b.download(t)?),
            );
        }
    }
    if let Some(table) = table {
        for (l, layer) in table.layers().iter().enumerate() {
            ck.insert(
                format!("em.assignments.{l}"),
                StoredTensor::u16(vec![table.examples(), layer.k()], layer.as_slice().to_vec()),
            );
        }
    }
    Ok(())
}

/// Reads back what [`save_state`] wrote; the table, when present, must have `table`'s shape.
pub(crate) fn restore_state<B: Backend>(
    meta: &MetaReader<'_>,
    b: &B,
    params: &mut ParamStore<B>,
    optimizer: &mut Adam<B>,
    table: &mut Option<AssignmentTable>,
    adam_t: u64,
) -> Result<(), TrainError> {
    let ck = meta.ck;
    ck.load_params(b, params, ExtraTensors::Ignore)?;
    let mut moments = Vec::new();
    for id in params.ids() {
        let name = params.name(id);
        let shape = b.shape(params.get(id));
        if ck.get(&format!("optimizer.m.{name}")).is_some() {
            let m = b.upload(shape, ck.f32(&format!("optimizer.m.{name}"), Some(&shape))?);
            let v = b.upload(shape, ck.f32(&format!("optimizer.v.{name}"), Some(&shape))?);
            moments.push((id, [m, v]));
        }
    }
    optimizer.restore(adam_t, moments);
    if let Some(t) = table {
        let mut layers = Vec::new();
        for (l, layer) in t.layers().iter().enumerate() {
            let data = ck.u16(
                &format!("em.assignments.{l}"),
                Some(&[t.examples(), layer.k()]),
            )?;
            layers.push((layer.modules(), layer.k(), data.to_vec()));
        }
        *table =
            Some(AssignmentTable::from_raw(t.examples(), layers).map_err(|p| meta.mismatch(p))?);
    }
    Ok(())
}
