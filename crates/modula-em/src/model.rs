//! What EM and the baselines need from a network, whatever its task: a forward pass whose
//! module selections come from stored assignments or from a router, per-row likelihood terms,
//! a backward pass for a weighted objective, and candidate scoring for the E-step.
//!
//! A network's selections come in *groups*: one group per modular layer of a feed-forward
//! network, one per time step of a recurrent one. Each group has `rows` rows and is keyed in
//! the [`crate::AssignmentTable`] by one table layer and one example key per row (see
//! [`crate::Batch`]).

use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Ctx, Grads, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand_chacha::ChaCha8Rng;

use crate::config::EStepSettings;

/// Targets of a batch of a feed-forward network.
#[derive(Debug)]
pub enum Target<B: Backend> {
    /// Real-valued targets `[n, d_out]` under a Gaussian with this variance.
    Regression {
        /// The targets.
        y: B::Tensor,
        /// Variance of `p(y | x, a)`.
        variance: f32,
    },
    /// Class (or next-word) indices, one per row, under a softmax.
    Classes(Vec<u32>),
    /// Class indices, one per row, under a softmax over each row's allowed classes only (a
    /// per-task output head): `mask [n, classes]`, 0 at an allowed class and
    /// [`MASKED_LOGIT`] elsewhere, is added to the logits. Build it with
    /// [`Target::among`].
    ClassesAmong {
        /// The class of each row, one of its allowed classes.
        labels: Vec<u32>,
        /// The additive mask.
        mask: B::Tensor,
    },
}

/// The logit offset of a class outside a row's allowed ones: its probability underflows to
/// exactly zero, and so does its gradient.
pub const MASKED_LOGIT: f32 = -1e30;

impl<B: Backend> Target<B> {
    /// Class targets under a softmax over each row's `allowed` classes (of `classes` in all).
    ///
    /// # Panics
    /// If `allowed` has another length than `labels`, or a label or allowed class is not
    /// below `classes`, or a label is not among its row's allowed classes.
    #[track_caller]
    pub fn among(b: &B, labels: Vec<u32>, allowed: &[&[u32]], classes: usize) -> Self {
        assert_eq!(allowed.len(), labels.len(), "one allowed set per row");
        let mut mask = vec![MASKED_LOGIT; labels.len() * classes];
        for (row, (own, &label)) in allowed.iter().zip(&labels).enumerate() {
            assert!(
                own.contains(&label),
                "row {row}: label {label} is not allowed"
            );
            for &c in own.iter() {
                assert!((c as usize) < classes, "class {c} of {classes}");
                mask[row * classes + c as usize] = 0.0;
            }
        }
        let mask = b.upload([labels.len(), classes], &mask);
        Target::ClassesAmong { labels, mask }
    }
}

/// Chooses the selection of group `g` from its controller's distributions. A network calls
/// it group by group, so sampling through it is ancestral (over layers, or through time).
pub type Router<'r, B> =
    dyn FnMut(usize, &ControllerOutput<B>) -> Result<Selection, BackendError> + 'r;

/// How a forward pass chooses its selections.
pub enum Routes<'a, 'r, B: Backend> {
    /// Known before the pass, one per group (EM's stored assignments).
    Stored(&'a [Selection]),
    /// Chosen group by group from the controller's output (sampling, greedy, uniform).
    Chosen(&'a mut Router<'r, B>),
    /// The modules follow `route`'s choices while `log p(a | .)` is taken at `targets` (one
    /// per group), which the controller's loss then pulls it towards: EM along the greedy
    /// path ([`crate::EPath::Greedy`]), where the modules train on the routes the controller
    /// picks at test time and the E-step's choices only teach the controller. Sequence
    /// models only.
    Guided {
        /// The controller's target selection of each group.
        targets: &'a [Selection],
        /// Chooses the selection the modules run.
        route: &'a mut Router<'r, B>,
    },
}

/// Summary of the controllers' distributions over a batch (for diagnostics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControllerStats {
    /// Mean entropy (nats) of the per-slot distributions.
    pub mean_entropy: f64,
    /// Entropy (nats) of the batch-averaged distribution, averaged over slots and layers.
    pub batch_entropy: f64,
}

/// How the rows of a forward pass form REINFORCE's episodes, the units that share one reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Episodes {
    /// Every row is its own episode (a feed-forward network: one example, one reward).
    Rows,
    /// Row `j` belongs to stream `j % n` of `n` streams (a recurrent window, time-major):
    /// every choice of a stream in the window shares the window's log-likelihood.
    Streams(usize),
}

/// Host-side result of a forward pass.
#[derive(Debug)]
pub struct Forward<B: Backend, C> {
    /// `-log p(y | ., a)` per row (per example, or per position of a window).
    pub nll: Vec<f32>,
    /// `log p(a | .)` per row summed over the row's groups (empty for networks without a
    /// controller distribution, such as noisy top-k and dense sequence models).
    pub log_p: Vec<f32>,
    /// The selection of each group.
    pub selections: Vec<Selection>,
    /// Per table layer, how many (row, slot) pairs each module served.
    pub usage: Vec<Vec<u64>>,
    /// Controller diagnostics, when requested.
    pub stats: Option<ControllerStats>,
    /// An auxiliary loss the model adds to the objective itself (top-k's importance loss, as
    /// reported by the model; 0 when it reports none).
    pub importance: f64,
    /// REINFORCE's episodes.
    pub episodes: Episodes,
    /// State to carry into the next batch (a recurrent network's last hidden state).
    pub carry: Option<B::Tensor>,
    /// State for [`Model::backward`].
    pub cache: C,
}

/// The E-step's candidates for a batch of `n` examples: `samples` candidates per example, row
/// `s * n + i` being candidate `s` of example `i`, candidate 0 the stored assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    /// Candidates per example (the E-step settings' `samples` for whole-path candidates; 2, the
    /// stored and the searched path, for a per-step search).
    pub samples: usize,
    /// `log p(y | ., a) + log p(a | .)` of each candidate row under the current parameters.
    pub scores: Vec<f64>,
    /// The selection of each group over all `samples * n` candidate rows.
    pub selections: Vec<Selection>,
}

/// A network with modular layers that EM and the baselines can train.
pub trait Model<B: Backend> {
    /// What one forward pass reads: inputs and targets (and a carried state).
    type Input;
    /// What forward keeps for backward.
    type Cache;

    /// `(M, K)` of each layer of the assignment table a forward pass's groups are keyed into;
    /// empty when the network routes without a controller distribution (EM cannot train it).
    fn table_shapes(&self) -> Vec<(usize, usize)>;

    /// Forward pass over `input`, routed by `routes`. With `stats`, also summarises the
    /// controllers' distributions.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &Self::Input,
        routes: Routes<'_, '_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<Forward<B, Self::Cache>, BackendError>;

    /// Backward pass for the objective `sum_j d_nll * nll[j] + d_logp[j] * log_p[j]` (plus
    /// any auxiliary loss the model adds itself, such as top-k's importance loss); accumulates
    /// every parameter gradient. An empty `d_logp` leaves the controller term out.
    ///
    /// # Errors
    /// Device failures.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: Self::Cache,
        d_nll: f32,
        d_logp: &[f32],
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError>;

    /// Scores candidate selections per example for the E-step, as `estep` asks: candidate 0
    /// follows `stored` (one selection per group); with `Search::Path` the other
    /// `estep.samples - 1` are drawn ancestrally from the controllers with `rng`, with
    /// `Search::Step` (sequence models) candidate 1 is the path a per-step search found.
    ///
    /// `keys` are the table keys of the batch's examples (its first group's). A feed-forward
    /// network draws each candidate of each example from a stream of its own, named by one
    /// draw from `rng`, the candidate and the example's key
    /// ([`crate::estep::example_streams`]), so that the draws do not depend on which other
    /// examples share the batch, or on how a data-parallel run shards it.
    ///
    /// # Errors
    /// Device failures.
    #[allow(clippy::too_many_arguments)]
    fn score_candidates(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &Self::Input,
        stored: &[Selection],
        keys: &[u32],
        estep: &EStepSettings,
        rng: &mut ChaCha8Rng,
        ctx: &mut Ctx,
    ) -> Result<Candidates, BackendError>;

    /// Whether sampled selections (REINFORCE's) are drawn per example, each example's from a
    /// stream of its own ([`crate::estep::example_streams`]), so that a data-parallel rank
    /// draws for its share of a batch what one process draws for those examples. True for
    /// feed-forward networks; a sequence model samples its windows in batch order.
    fn samples_per_example(&self) -> bool {
        false
    }

    /// Moves this step's gradients of derived parameters ([`ParamStore::mark_derived`]) onto
    /// the parameters they derive from. The trainer calls it after each training step's
    /// backward pass, before clipping and the optimiser; a network without derived
    /// parameters has nothing to do.
    fn fold_grads(&self, _b: &B, _grads: &mut Grads<B>) {}

    /// Recomputes derived parameters from the trained ones. The trainer calls it after every
    /// optimiser step and after restoring a checkpoint.
    fn refresh(&self, _b: &B, _params: &mut ParamStore<B>) {}
}

/// The selection of candidate rows `samples * n`: the stored rows first (candidate 0), then the
/// rows `n..` of a fresh draw `drawn` over all candidate rows.
pub fn stored_then_drawn(stored: &Selection, drawn: &Selection) -> Selection {
    let k = stored.k();
    let mut picks = stored.as_slice().to_vec();
    picks.extend_from_slice(&drawn.as_slice()[stored.rows() * k..]);
    Selection::new(k, picks)
}

/// Entropy statistics of per-slot log-probabilities `[rows * K, M]` (row-major, slot-minor).
pub fn controller_stats(log_probs: &[f32], modules: usize, k: usize) -> ControllerStats {
    let slots = log_probs.len() / modules.max(1);
    if slots == 0 {
        return ControllerStats::default();
    }
    let mut mean_entropy = 0.0f64;
    let mut avg = vec![0.0f64; k * modules];
    for (s, row) in log_probs.chunks(modules).enumerate() {
        for (m, &l) in row.iter().enumerate() {
            let p = (l as f64).exp();
            if p > 0.0 {
                mean_entropy -= p * l as f64;
            }
            avg[(s % k) * modules + m] += p;
        }
    }
    let rows = (slots / k) as f64;
    let batch_entropy = avg
        .chunks(modules)
        .map(|slot| {
            slot.iter()
                .map(|&s| s / rows)
                .filter(|&p| p > 0.0)
                .map(|p| -p * p.ln())
                .sum::<f64>()
        })
        .sum::<f64>()
        / k as f64;
    ControllerStats {
        mean_entropy: mean_entropy / slots as f64,
        batch_entropy,
    }
}

/// How many (row, slot) pairs each of `modules` modules serves in `selections`.
pub fn usage_counts<'s>(
    selections: impl IntoIterator<Item = &'s Selection>,
    modules: usize,
) -> Vec<u64> {
    let mut counts = vec![0u64; modules];
    for s in selections {
        s.as_slice().iter().for_each(|&a| counts[a as usize] += 1);
    }
    counts
}

/// `exp` of the entropy of a histogram: the number of modules in real use (0 for an empty
/// histogram).
pub fn effective_count(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / total as f64)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}
