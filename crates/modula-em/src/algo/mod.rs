//! The training algorithms, one file each, behind one object-safe trait: [`em`] (generalized
//! Viterbi EM), [`reinforce`], [`topk`] (noisy top-k gating), [`dense`] and [`uniform`]
//! (uniformly random routing). Each computes its gradients on a batch (and EM its E-step);
//! the [`crate::Trainer`] applies the optimiser, so every algorithm shares the same
//! optimiser, clipping and schedule.
//!
//! Adding an algorithm is one file here implementing [`Algorithm`], one variant of
//! [`crate::Algo`] and one line in [`build`] (docs/architecture.md walks through it).

pub mod dense;
pub mod em;
pub mod reinforce;
pub mod topk;
pub mod uniform;

use std::ops::Range;

use modula_modular::ControllerOutput;
use modula_nn::{Checkpoint, Ctx, Grads, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand_chacha::ChaCha8Rng;

use crate::config::{Algo, TrainSettings};
use crate::error::TrainError;
use crate::estep::EStats;
use crate::meta::MetaReader;
use crate::model::{ControllerStats, Forward, Model, Routes};
use crate::replicas::Replicas;
use crate::table::AssignmentTable;
use crate::task::Batch;

/// What a gradient step measured on its batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Mean `-log p(y | ., a)` over the batch's rows.
    pub nll: f64,
    /// Mean `-log p(a | .)` over the batch's rows (0 without a controller distribution).
    pub ctrl_nll: f64,
    /// The model's auxiliary loss (top-k's importance loss), 0 when it reports none.
    pub importance: f64,
    /// The trainer's batch-independent penalty ([`crate::Penalty`], EWC's), 0 without one.
    pub penalty: f64,
    /// Controller entropies, when the model reports them.
    pub controller: Option<ControllerStats>,
    /// Per table layer, how many (row, slot) pairs each module served.
    pub usage: Vec<Vec<u64>>,
    /// Training units of the batch (examples, or tokens).
    pub units: usize,
}

impl StepStats {
    /// The loss whose finiteness the trainer checks.
    pub fn loss(&self) -> f64 {
        self.nll + self.ctrl_nll + self.importance + self.penalty
    }
}

/// What a gradient step hands back to the trainer.
#[derive(Debug)]
pub struct Gradient<B: Backend> {
    /// The batch statistics.
    pub stats: StepStats,
    /// State to carry into the next batch.
    pub carry: Option<B::Tensor>,
}

/// Everything an algorithm's step may use: the network, the device, the parameters, the
/// gradient buffers to fill, the iteration's seeded randomness, and the other ranks of a
/// data-parallel run.
pub struct StepContext<'a, B: Backend, M: Model<B>> {
    /// The network.
    pub model: &'a M,
    /// The backend.
    pub backend: &'a B,
    /// The parameters (read-only: the trainer applies the optimiser).
    pub params: &'a ParamStore<B>,
    /// Gradient buffers, reset before the step.
    pub grads: &'a mut Grads<B>,
    /// The iteration's own random stream (sampled selections).
    pub rng: &'a mut ChaCha8Rng,
    /// Training context (dropout and top-k noise draw from its own stream).
    pub ctx: &'a mut Ctx,
    /// The other ranks when this step trains a data-parallel rank's share of the batch
    /// ([`crate::Trainer::distribute`]), for the statistics an algorithm needs over the whole
    /// batch (REINFORCE's mean reward); none in one process.
    pub replicas: Option<&'a dyn Replicas<B>>,
}

/// A [`StepContext`] without its random stream, which the step's router borrows.
struct Pass<'a, B: Backend, M: Model<B>> {
    model: &'a M,
    backend: &'a B,
    params: &'a ParamStore<B>,
    grads: &'a mut Grads<B>,
    ctx: &'a mut Ctx,
    replicas: Option<&'a dyn Replicas<B>>,
}

impl<'a, B: Backend, M: Model<B>> StepContext<'a, B, M> {
    /// Splits off the random stream from the rest.
    fn split(self) -> (&'a mut ChaCha8Rng, Pass<'a, B, M>) {
        let StepContext {
            model,
            backend,
            params,
            grads,
            rng,
            ctx,
            replicas,
        } = self;
        let pass = Pass {
            model,
            backend,
            params,
            grads,
            ctx,
            replicas,
        };
        (rng, pass)
    }
}

/// A training algorithm. Object-safe, so that a run picks one at run time.
pub trait Algorithm<B: Backend, M: Model<B>>: std::fmt::Debug {
    /// Which algorithm this is.
    fn algo(&self) -> Algo;

    /// Computes the gradients of the algorithm's objective on `batch` into `s.grads`.
    ///
    /// # Errors
    /// Device failures, and a failed collective in a data-parallel run.
    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, TrainError>;

    /// In a data-parallel run, for a rank that owns none of the iteration's batch: takes part,
    /// with nothing of its own, in the collectives that [`Algorithm::gradient`] makes on the
    /// other ranks (REINFORCE's mean reward), and updates the state they decide as they do.
    /// Algorithms whose gradient step makes no collective have nothing to do.
    ///
    /// # Errors
    /// A failed collective.
    fn idle_gradient(&mut self, _replicas: &dyn Replicas<B>) -> Result<(), TrainError> {
        Ok(())
    }

    /// EM's assignment table (EM only).
    fn table(&self) -> Option<&AssignmentTable> {
        None
    }

    /// Runs an E-step on `batch`, for algorithms that have one (EM). Returns `None` for the
    /// others, which the trainer then never asks.
    ///
    /// # Errors
    /// Device failures.
    fn e_step(
        &mut self,
        _s: StepContext<'_, B, M>,
        _batch: &Batch<M::Input>,
    ) -> Option<Result<EStats, BackendError>> {
        None
    }

    /// Whether the algorithm runs E-steps.
    fn has_e_step(&self) -> bool {
        false
    }

    /// How many table keys its E-steps have visited so far (EM only).
    fn visited(&self) -> Option<usize> {
        None
    }

    /// Registers training keys up to `rows` (EM's table grows by the new examples, their
    /// assignments drawn from `rng`; keys already registered keep theirs). Algorithms without
    /// a table ignore it.
    fn grow(&mut self, _rows: usize, _rng: &mut ChaCha8Rng) {}

    /// Keeps only the per-example state of the keys `keys` (a data-parallel rank's block of
    /// examples: EM's table and its record of visited keys) and returns true; an algorithm
    /// that cannot be trained data-parallel with `model` keeps everything and returns false.
    fn keep_shard(&mut self, _model: &M, _keys: Range<usize>) -> bool {
        false
    }

    /// The names of the checkpoint tensors [`Algorithm::save`] writes whose rows are the
    /// examples a data-parallel rank owns (after [`Algorithm::keep_shard`]): the trainer
    /// gathers them from every rank into one whole tensor.
    fn sharded_state(&self) -> Vec<String> {
        Vec::new()
    }

    /// Writes the algorithm's own state (EM's table, REINFORCE's baseline) into `ck`.
    fn save(&self, _ck: &mut Checkpoint) {}

    /// Reads back what [`Algorithm::save`] wrote.
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] or a checkpoint error when the state does not fit.
    fn restore(&mut self, _meta: &MetaReader<'_>) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The algorithm `settings.algo` names, for `model` on a task with `table_rows` rows, its
/// initial state drawn from `rng` (EM's random initial table).
///
/// Every other algorithm starts stateless or from its own defaults.
pub fn build<B: Backend, M: Model<B>>(
    settings: &TrainSettings,
    model: &M,
    table_rows: usize,
    rng: &mut ChaCha8Rng,
) -> Box<dyn Algorithm<B, M>> {
    match settings.algo {
        Algo::Em => Box::new(em::Em::new(
            AssignmentTable::random(table_rows, &model.table_shapes(), rng),
            settings,
        )),
        Algo::Reinforce => Box::new(reinforce::Reinforce::new(settings.reinforce_decay)),
        Algo::Topk => Box::new(topk::TopK),
        Algo::Dense => Box::new(dense::Dense),
        Algo::Uniform => Box::new(uniform::Uniform),
    }
}

/// Means of a host vector (0 for an empty one).
fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

/// Forward with `routes`, then backward with `d_nll = 1 / rows` and the controller weights
/// `d_logp(forward)` (empty to leave the controller out): the gradient step every algorithm
/// shares.
fn routed_gradient<B: Backend, M: Model<B>>(
    s: Pass<'_, B, M>,
    batch: &Batch<M::Input>,
    routes: Routes<'_, '_, B>,
    d_logp: impl FnOnce(&Forward<B, M::Cache>) -> Result<Vec<f32>, TrainError>,
) -> Result<Gradient<B>, TrainError> {
    let (b, params) = (s.backend, s.params);
    let out = s
        .model
        .forward(b, params, &batch.input, routes, true, s.ctx)?;
    let stats = StepStats {
        nll: mean(&out.nll),
        ctrl_nll: -mean(&out.log_p),
        importance: out.importance,
        penalty: 0.0,
        controller: out.stats.clone(),
        usage: out.usage.clone(),
        units: batch.units,
    };
    let d_logp = d_logp(&out)?;
    let scale = 1.0 / out.nll.len() as f32;
    let carry = out.carry;
    s.model
        .backward(b, params, out.cache, scale, &d_logp, s.grads)?;
    Ok(Gradient { stats, carry })
}

/// The gradient step of an algorithm that lets the network route greedily by itself (the
/// argmax of every slot; a top-k or dense network ignores the router) and leaves the
/// controller term out.
fn greedy_gradient<B: Backend, M: Model<B>>(
    s: StepContext<'_, B, M>,
    batch: &Batch<M::Input>,
) -> Result<Gradient<B>, TrainError> {
    let (_, pass) = s.split();
    let b = pass.backend;
    let mut route = |_: usize, out: &ControllerOutput<B>| out.greedy(b);
    routed_gradient(pass, batch, Routes::Chosen(&mut route), |_| Ok(Vec::new()))
}
