//! What EM and the baselines need from a network: a forward pass whose module selections are
//! chosen layer by layer by a router, per-example likelihood terms, and a backward pass.

use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Ctx, Grads, ParamStore};
use modula_tensor::{Backend, BackendError};

/// Targets of a batch.
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
}

/// Chooses the selection of modular layer `layer` from its controller's distributions. The
/// network calls it layer by layer, so sampling through it is ancestral.
pub type Router<'r, B> =
    dyn FnMut(usize, &ControllerOutput<B>) -> Result<Selection, BackendError> + 'r;

/// Summary of the controllers' distributions over a batch (for diagnostics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControllerStats {
    /// Mean entropy (nats) of the per-slot distributions.
    pub mean_entropy: f64,
    /// Entropy (nats) of the batch-averaged distribution, averaged over slots and layers.
    pub batch_entropy: f64,
}

/// Result of a forward pass.
#[derive(Debug)]
pub struct Output<B: Backend, C> {
    /// `-log p(y | x, a)` per row, `[n, 1]`.
    pub task_nll: B::Tensor,
    /// `log p(a | x)` per row summed over modular layers, `[n, 1]` (zeros for gates that are
    /// not distributions, such as noisy top-k).
    pub ctrl_logp: B::Tensor,
    /// The selection used at each modular layer.
    pub selections: Vec<Selection>,
    /// The network's output (predicted mean or logits).
    pub prediction: B::Tensor,
    /// Controller diagnostics, when requested.
    pub stats: Option<ControllerStats>,
    /// State for [`ModularModel::backward`].
    pub cache: C,
}

/// A network with modular layers that EM and the baselines can train.
pub trait ModularModel<B: Backend> {
    /// What forward keeps for backward.
    type Cache;

    /// `(M, K)` of each modular layer, in forward order.
    fn layer_shapes(&self) -> Vec<(usize, usize)>;

    /// Forward pass over `x` with targets `target`, asking `route` for each layer's selection.
    /// With `stats`, also summarises the controllers' distributions.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        target: &Target<B>,
        route: &mut Router<'_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<Output<B, Self::Cache>, BackendError>;

    /// Backward pass for the objective `sum_i d_task[i] * task_nll[i] + d_ctrl[i] *
    /// ctrl_logp[i]` (plus any auxiliary loss the model adds itself, such as top-k's
    /// importance loss); accumulates every parameter gradient.
    ///
    /// # Errors
    /// Device failures.
    fn backward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: Self::Cache,
        d_task: &B::Tensor,
        d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError>;
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
