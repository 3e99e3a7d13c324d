//! The one training loop's state for every task and algorithm: parameters, optimiser, the
//! algorithm's state, the task's cursor, and checkpoints. Every random choice of iteration `i`
//! comes from its own stream of the run's seed, so a run resumed from a checkpoint continues
//! exactly as the uninterrupted run would.

use std::collections::BTreeMap;

use modula_nn::{Adam, Checkpoint, Ctx, ExtraTensors, Grads, Optimizer, ParamStore, StoredTensor};
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::algo::{self, Algorithm, Gradient, StepContext, StepStats};
use crate::config::{Algo, TrainSettings};
use crate::error::TrainError;
use crate::estep::EStats;
use crate::global::{global_e_step, global_step};
use crate::guard::{DivergenceGuard, Reference};
use crate::meta::MetaReader;
use crate::model::Model;
use crate::replicas::Replicas;
use crate::table::AssignmentTable;
use crate::task::{EStepDue, Task};

/// What one iteration did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutcome {
    /// The E-step it ran (EM), if any.
    pub e_step: Option<EStats>,
    /// Its gradient step, unless the iteration was an E-step only.
    pub gradient: Option<StepStats>,
}

/// Stream ids that keep the run's random choices apart.
const STREAM_TABLE: u64 = 1 << 62;
const STREAM_CTX: u64 = 1 << 60;
const STREAM_E_BEFORE: u64 = 1 << 59;
const STREAM_E_CTX: u64 = 1 << 57;
/// With the table's row count before the growth: the assignments of examples registered
/// during a run (a continual run's later tasks).
const STREAM_GROW: u64 = 1 << 58;

/// Stream `id` of the ChaCha generator seeded by `seed`.
pub fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

/// A term of the training objective that does not depend on the batch, such as EWC's
/// quadratic penalty: the trainer adds its gradient after the algorithm's, before clipping and
/// the optimiser step.
pub trait Penalty<B: Backend>: std::fmt::Debug {
    /// Adds the term's gradient with respect to `params` into `grads` and returns its value.
    ///
    /// # Errors
    /// A device failure.
    fn add_gradient(
        &self,
        b: &B,
        params: &ParamStore<B>,
        grads: &mut Grads<B>,
    ) -> Result<f64, BackendError>;
}

/// A training run in memory, for any task `T` and any algorithm.
#[derive(Debug)]
pub struct Trainer<B: Backend, T: Task<B>> {
    /// The backend.
    pub backend: B,
    /// The task: data, batches and cursor.
    pub task: T,
    /// The network.
    pub model: T::Model,
    /// Its parameters.
    pub params: ParamStore<B>,
    /// The optimiser (Adam).
    pub optimizer: Adam<B>,
    /// The algorithm and optimiser settings.
    pub settings: TrainSettings,
    /// The run's seed.
    pub seed: u64,
    /// Iterations completed.
    pub step: u64,
    /// The divergence guard, with the run's initial loss.
    pub guard: DivergenceGuard,
    /// A term added to every gradient step's objective whatever the batch (a continual run's
    /// EWC penalty); none by default.
    pub penalty: Option<Box<dyn Penalty<B>>>,
    algorithm: Box<dyn Algorithm<B, T::Model>>,
    /// Gradient buffers, reset (not freed) every step.
    grads: Grads<B>,
    /// The other ranks of a data-parallel run ([`Trainer::distribute`]); none alone.
    replicas: Option<Box<dyn Replicas<B>>>,
}

/// Checkpoint metadata key of the run's initial loss (its bit pattern), the divergence
/// guard's reference.
const META_INITIAL_LOSS: &str = "initial_loss";

impl<B: Backend, T: Task<B>> Trainer<B, T> {
    /// A new run of `settings.algo` on `task` with `model` (its parameters in `params`). EM's
    /// table starts uniformly random from the seed.
    ///
    /// # Panics
    /// If the task has no training rows.
    #[track_caller]
    pub fn new(
        backend: B,
        task: T,
        model: T::Model,
        params: ParamStore<B>,
        settings: TrainSettings,
        seed: u64,
    ) -> Self {
        let rows = task.table_rows();
        assert!(rows > 0, "the task has no training rows");
        let algorithm = algo::build(&settings, &model, rows, &mut stream(seed, STREAM_TABLE));
        Trainer {
            optimizer: Adam::new(settings.lr),
            backend,
            task,
            model,
            params,
            settings,
            seed,
            step: 0,
            guard: DivergenceGuard::new(settings.divergence_factor),
            penalty: None,
            algorithm,
            grads: Grads::new(),
            replicas: None,
        }
    }

    /// Makes this trainer one rank of a data-parallel run: from now on it trains on the
    /// examples of every batch that it owns (`replicas.owned`), E-steps them against its own
    /// block of EM's table, and sums gradients and statistics with the other ranks, so that
    /// every rank takes the step one process would take on the whole batch. Call it on a new
    /// trainer (a restored checkpoint is sharded as it is read).
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when the algorithm or the task cannot be trained
    /// data-parallel (an algorithm that [distributes](Algo::distributes) on a task of fixed
    /// size whose batches can be sharded, so far).
    pub fn distribute(&mut self, replicas: Box<dyn Replicas<B>>) -> Result<(), TrainError> {
        let owned = replicas.owned(self.task.table_rows());
        if !self.algo().distributes() {
            return Err(TrainError::Distributed(format!(
                "train.algo = \"{}\" cannot be trained data-parallel yet; use \"em\", \"dense\" or \"reinforce\"",
                self.algo().name()
            )));
        }
        self.task.shard(owned.clone())?;
        if !self.algorithm.keep_shard(&self.model, owned) {
            return Err(TrainError::Distributed(format!(
                "train.algo = \"{}\" cannot be trained data-parallel with this task's model (its \
                 state or its random draws are not per example); train it without --dist",
                self.algo().name()
            )));
        }
        self.replicas = Some(replicas);
        Ok(())
    }

    /// Whether any rank passes `flag` (a collective in a data-parallel run: every rank calls
    /// it at the same point, so that a decision one rank takes, such as stopping at a time
    /// limit, is taken by all); `flag` itself alone.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] when the transport fails.
    pub fn agree(&self, flag: bool) -> Result<bool, TrainError> {
        let Some(r) = &self.replicas else {
            return Ok(flag);
        };
        let mut v = [f64::from(u8::from(flag))];
        r.sum(&mut v)?;
        Ok(v[0] > 0.0)
    }

    /// The algorithm being run.
    pub fn algo(&self) -> Algo {
        self.algorithm.algo()
    }

    /// EM's assignment table (EM runs only).
    pub fn table(&self) -> Option<&AssignmentTable> {
        self.algorithm.table()
    }

    /// The task, to prepare its next batch, beside EM's table (EM runs only), which a task
    /// may read to choose it (module-aware replay).
    pub fn task_and_table(&mut self) -> (&mut T, Option<&AssignmentTable>) {
        (&mut self.task, self.algorithm.table())
    }

    /// Registers the training examples the task added since the last iteration (a continual
    /// run's next task) in EM's table: they take the next keys, their assignments drawn from
    /// a stream of the seed named by the table's size before the growth, so that a run is a
    /// function of its seed and its tasks' sizes. [`Trainer::step`] calls it first; a caller
    /// that reads the table for a new task's first batch calls it before.
    pub fn register_examples(&mut self) {
        // A data-parallel run's tasks have a fixed size (`Task::shard` refuses the others).
        if self.replicas.is_some() {
            return;
        }
        let rows = self.task.table_rows();
        let have = self.table().map_or(rows, AssignmentTable::examples);
        if rows > have {
            let mut rng = stream(self.seed, STREAM_GROW | have as u64);
            self.algorithm.grow(rows, &mut rng);
        }
    }

    /// Runs the next iteration: an E-step when the task says one is due (EM only), and the
    /// algorithm's gradient step unless the E-step replaces it.
    ///
    /// # Errors
    /// [`TrainError::Diverged`] when the loss is not finite (parameters stay as they were),
    /// or a device failure.
    pub fn step(&mut self) -> Result<StepOutcome, TrainError> {
        self.register_examples();
        let step = self.step;
        let batch = self.task.batch(&self.backend, step);
        let due = if self.algorithm.has_e_step() {
            self.task.e_step_due(step, self.settings.e_every)
        } else {
            EStepDue::No
        };
        let mut rng = stream(self.seed, step);
        let mut ctx = Ctx {
            train: true,
            rng: stream(self.seed, step | STREAM_CTX),
        };
        let mut outcome = StepOutcome::default();
        if due != EStepDue::No {
            let e_batch = self.task.e_step_batch(&self.backend, step);
            // An E-step in place of a gradient step draws from the iteration's own stream; one
            // before a gradient step leaves that stream to it.
            let (mut before_rng, mut before_ctx);
            let (e_rng, e_ctx) = if due == EStepDue::Before {
                before_rng = stream(self.seed, step | STREAM_E_BEFORE);
                // Scoring runs in evaluation mode; its stream feeds the dropout an E-step
                // draws only when asked to score with it (`e_dropout`).
                before_ctx = Ctx {
                    train: false,
                    rng: stream(self.seed, step | STREAM_E_CTX),
                };
                (&mut before_rng, &mut before_ctx)
            } else {
                (&mut rng, &mut ctx)
            };
            let s = StepContext {
                model: &self.model,
                backend: &self.backend,
                params: &self.params,
                grads: &mut self.grads,
                rng: e_rng,
                ctx: e_ctx,
                replicas: self.replicas.as_deref(),
            };
            let e_batch = e_batch.as_ref().unwrap_or(&batch);
            // A rank that owns none of the batch's examples has nothing to E-step.
            let mut e = if e_batch.examples > 0 {
                self.algorithm
                    .e_step(s, e_batch)
                    .expect("an algorithm with E-steps runs them")?
            } else {
                EStats::default()
            };
            let visited = self.algorithm.visited().unwrap_or(0);
            let trained = self.task.trained_keys();
            e.coverage = visited as f64 / trained.max(1) as f64;
            if let Some(r) = &self.replicas {
                e = global_e_step(r.as_ref(), &e, e_batch.examples, visited, trained)?;
            }
            outcome.e_step = Some(e);
            if due == EStepDue::Instead {
                self.task.advance(&self.backend, None);
                self.step += 1;
                return Ok(outcome);
            }
        }
        self.grads.reset();
        let s = StepContext {
            model: &self.model,
            backend: &self.backend,
            params: &self.params,
            grads: &mut self.grads,
            rng: &mut rng,
            ctx: &mut ctx,
            replicas: self.replicas.as_deref(),
        };
        let mut g = if batch.examples > 0 {
            self.algorithm.gradient(s, &batch)?
        } else {
            if let Some(r) = &self.replicas {
                self.algorithm.idle_gradient(r.as_ref())?;
            }
            // A rank without examples in this batch adds nothing to the sums, in the shape
            // of the other ranks' statistics (a usage count per module of every layer); the
            // ranks with examples say whether the network has controller statistics.
            let usage = self
                .model
                .table_shapes()
                .iter()
                .map(|&(modules, _)| vec![0; modules])
                .collect();
            Gradient {
                stats: StepStats {
                    usage,
                    ..StepStats::default()
                },
                carry: None,
            }
        };
        if let Some(r) = &self.replicas {
            // The gradients are of the rank's mean loss: weighted by its share of the batch,
            // they sum to the gradient of the global mean. Statistics are summed first, so
            // that every rank knows the global batch and checks the same loss below.
            let (stats, total) = global_step(r.as_ref(), g.stats, batch.examples)?;
            g.stats = stats;
            let share = batch.examples as f32 / total.max(1) as f32;
            r.sum_grads(&self.backend, &self.params, &mut self.grads, share)?;
        }
        if let Some(penalty) = &self.penalty {
            g.stats.penalty = penalty.add_gradient(&self.backend, &self.params, &mut self.grads)?;
        }
        self.model.fold_grads(&self.backend, &mut self.grads);
        self.guard.check(step, g.stats.loss())?;
        let b = &self.backend;
        if self.settings.grad_clip > 0.0 {
            self.grads.clip_norm(b, self.settings.grad_clip)?;
        }
        self.optimizer.step(b, &mut self.params, &self.grads);
        self.model.refresh(b, &mut self.params);
        self.task.advance(b, g.carry);
        self.step += 1;
        outcome.gradient = Some(g.stats);
        Ok(outcome)
    }

    /// Everything needed to resume: parameters, Adam's moments and step count, the
    /// algorithm's state, the task's cursor and the iteration counter.
    ///
    /// In a data-parallel run this is a collective (every rank calls it) and rank 0's
    /// checkpoint is the whole run's, in the one-process format, to be resumed on any number
    /// of ranks; the other ranks' hold only their own block of EM's table and are not to be
    /// written.
    ///
    /// # Errors
    /// A device failure while downloading tensors.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let b = &self.backend;
        let mut ck = Checkpoint::new();
        ck.add_params(b, &self.params)?;
        for (id, mv) in self.optimizer.moments() {
            let name = self.params.name(id).to_string();
            for (tag, t) in ["m", "v"].iter().zip(mv) {
                let [r, c] = b.shape(t);
                ck.insert(
                    format!("optimizer.{tag}.{name}"),
                    StoredTensor::f32(vec![r, c], b.download(t)?),
                );
            }
        }
        self.algorithm.save(&mut ck);
        if let Some(r) = &self.replicas {
            // The checkpoint of a data-parallel run is the one-process checkpoint: each
            // per-example tensor's blocks, gathered in rank order, are the whole tensor.
            for name in self.algorithm.sharded_state() {
                let local = ck.u16(&name, None)?.to_vec();
                let cols = ck.get(&name).map_or(1, |t| t.shape()[1]);
                let whole = r.gather(&local)?;
                ck.insert(
                    name,
                    StoredTensor::u16(vec![whole.len() / cols, cols], whole),
                );
            }
        }
        self.task.save(b, &mut ck)?;
        let meta: BTreeMap<String, String> = [
            ("step", self.step.to_string()),
            ("adam_t", self.optimizer.steps().to_string()),
            ("seed", self.seed.to_string()),
            ("algo", self.algo().name().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ck.metadata.extend(meta);
        if let Reference::Initial(loss) = self.guard.reference {
            ck.metadata
                .insert(META_INITIAL_LOSS.into(), loss.to_bits().to_string());
        }
        Ok(ck)
    }

    /// Restores the state saved by [`Trainer::checkpoint`].
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] when the checkpoint is for another algorithm, model or data, or
    /// a [`modula_nn::CheckpointError`] naming a missing or malformed tensor.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<(), TrainError> {
        let meta = MetaReader::new(ck, self.algo())?;
        let (step, adam_t) = (meta.number("step")?, meta.number("adam_t")?);
        let b = &self.backend;
        ck.load_params(b, &mut self.params, ExtraTensors::Ignore)?;
        // Derived parameters are saved too, but recomputing them keeps the invariant whatever
        // wrote the checkpoint.
        self.model.refresh(b, &mut self.params);
        let mut moments = Vec::new();
        for id in self.params.ids() {
            let name = self.params.name(id);
            let shape = b.shape(self.params.get(id));
            if ck.get(&format!("optimizer.m.{name}")).is_some() {
                let m = b.upload(shape, ck.f32(&format!("optimizer.m.{name}"), Some(&shape))?);
                let v = b.upload(shape, ck.f32(&format!("optimizer.v.{name}"), Some(&shape))?);
                moments.push((id, [m, v]));
            }
        }
        self.algorithm.restore(&meta)?;
        if let Some(r) = &self.replicas {
            // The checkpoint holds every example's state, whatever number of ranks wrote
            // it: keep this rank's block (an algorithm without a table keeps nothing).
            let owned = r.owned(self.task.table_rows());
            let keys = self.table().map_or(owned.clone(), AssignmentTable::keys);
            if owned.end > keys.end {
                return Err(meta.mismatch(format!(
                    "its EM table holds {} examples, fewer than the task's {}",
                    keys.end, owned.end
                )));
            }
            self.algorithm.keep_shard(&self.model, owned);
        }
        self.task.restore(b, ck)?;
        self.optimizer.restore(adam_t, moments);
        self.step = step;
        // A checkpoint without the initial loss predates the guard (or was written before the
        // first gradient step, when there was none yet).
        self.guard.reference = match ck.metadata.get(META_INITIAL_LOSS) {
            Some(_) => Reference::Initial(f64::from_bits(meta.number(META_INITIAL_LOSS)?)),
            None if step == 0 => Reference::Pending,
            None => Reference::Unknown,
        };
        Ok(())
    }
}
