//! What the feed-forward networks share ([`crate::models::ModularMlp`], the image networks of
//! [`crate::models::ImageModel`]): a layer's gate (a controller or noisy top-k) with its
//! routing and backward, the output distribution and its loss, the [`FeedForward`] trait that
//! a network implements, and the bodies of the [`crate::Model`] methods every such network
//! shares (its forward over stored or chosen routes, its weighted backward, and the E-step's
//! scoring of candidate selections, one routed pass per candidate).

use modula_modular::{Controller, ControllerOutput, Routing, Selection};
use modula_nn::{Ctx, Grads, Linear, Module, ParamStore};
use modula_nn::{
    gaussian_nll, gaussian_nll_backward, softmax_cross_entropy, softmax_cross_entropy_backward,
};
use modula_tensor::{Backend, BackendError, BinaryOp};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Algo, EStepSettings};
use crate::estep::{example_streams, propose_per_example};
use crate::model::{
    Candidates, ControllerStats, Episodes, Forward, Router, Routes, Target, controller_stats,
    usage_counts,
};
use crate::models::topk::{TopKCache, TopKGate};

/// How a layer chooses its modules.
#[derive(Clone, Debug)]
pub enum Gate {
    /// A controller defining `p(a | x)` (EM, REINFORCE, and trivially dense with `M = 1`).
    Controller(Controller),
    /// Noisy top-k gating with gate weights.
    TopK(TopKGate),
}

/// What a gate keeps for its backward.
pub(crate) enum GateCache<B: Backend> {
    Controller(ControllerOutput<B>, Selection),
    TopK(TopKCache<B>),
}

/// A layer's routing, as its gate chose it.
pub(crate) struct Gated<B: Backend> {
    /// The routing of the layer's rows.
    pub routing: Routing,
    /// The selection behind it.
    pub selection: Selection,
    /// Top-k's gate weights `[n, K]` (none for a controller).
    pub gates: Option<B::Tensor>,
    /// For the gate's backward.
    pub cache: GateCache<B>,
}

/// Controller statistics summed over a network's controller-gated layers.
#[derive(Default)]
pub(crate) struct StatSum {
    sum: ControllerStats,
    layers: usize,
}

impl StatSum {
    /// The mean over the layers added (zeros without any).
    pub fn mean(&self) -> ControllerStats {
        let k = self.layers.max(1) as f64;
        ControllerStats {
            mean_entropy: self.sum.mean_entropy / k,
            batch_entropy: self.sum.batch_entropy / k,
        }
    }
}

impl Gate {
    /// The gate of a layer with input width `d_in` for `algo`: noisy top-k's gate
    /// `{prefix}.gate` for `Algo::Topk` (which needs `2 <= k <= modules`), a controller
    /// `{prefix}.ctrl` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        prefix: &str,
        d_in: usize,
        modules: usize,
        k: usize,
        algo: Algo,
        rng: &mut impl Rng,
    ) -> Self {
        if algo == Algo::Topk {
            Gate::TopK(TopKGate::new(
                b,
                params,
                &format!("{prefix}.gate"),
                d_in,
                modules,
                k,
                rng,
            ))
        } else {
            Gate::Controller(Controller::new(
                b,
                params,
                &format!("{prefix}.ctrl"),
                d_in,
                modules,
                k,
                rng,
            ))
        }
    }

    /// `(M, K)` of the gate.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Gate::Controller(c) => (c.modules, c.k),
            Gate::TopK(g) => (g.modules, g.k),
        }
    }

    /// Routes the rows `h` of layer `layer`: a controller asks `route` for the selection and
    /// adds its `log p(a | h)` to `ctrl_logp` (and its entropies to `stats`, when given);
    /// noisy top-k draws its own selection and gate weights (noise from `ctx`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        h: &B::Tensor,
        layer: usize,
        route: &mut Router<'_, B>,
        stats: Option<&mut StatSum>,
        ctrl_logp: &mut B::Tensor,
        ctx: &mut Ctx,
    ) -> Result<Gated<B>, BackendError> {
        match self {
            Gate::Controller(c) => {
                let out = c.forward(b, params, h);
                if let Some(sum) = stats {
                    let s = controller_stats(&b.download(&out.log_probs)?, c.modules, c.heads());
                    sum.sum.mean_entropy += s.mean_entropy;
                    sum.sum.batch_entropy += s.batch_entropy;
                    sum.layers += 1;
                }
                let sel = route(layer, &out)?;
                b.axpy(1.0, &c.log_prob(b, &out, &sel), ctrl_logp);
                Ok(Gated {
                    routing: Routing::new(&sel, c.modules),
                    selection: sel.clone(),
                    gates: None,
                    cache: GateCache::Controller(out, sel),
                })
            }
            Gate::TopK(g) => {
                let (sel, gates, cache) = g.forward(b, params, h, ctx)?;
                Ok(Gated {
                    routing: Routing::new(&sel, g.modules),
                    selection: sel,
                    gates: Some(gates),
                    cache: GateCache::TopK(cache),
                })
            }
        }
    }

    /// The gate's backward: the controller's from `d_ctrl` (`[n, 1]`, the weight of each row's
    /// `log p(a | h)`), or top-k's from the gate weights' gradient `d_gates` plus its
    /// importance loss of weight `importance_weight`; adds the gate's input gradient to `dx`.
    ///
    /// # Errors
    /// Device failures.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: GateCache<B>,
        d_gates: Option<B::Tensor>,
        d_ctrl: &B::Tensor,
        importance_weight: f32,
        dx: &mut B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        match (self, cache) {
            (Gate::Controller(ctrl), GateCache::Controller(out, sel)) => {
                b.axpy(1.0, &ctrl.backward(b, params, out, &sel, d_ctrl, grads), dx);
            }
            (Gate::TopK(g), GateCache::TopK(tc)) => {
                let mut dg = b.download(&d_gates.expect("top-k layers are gated"))?;
                let (_, d_imp) = g.importance_loss(&tc, importance_weight);
                dg.iter_mut().zip(d_imp).for_each(|(a, v)| *a += v);
                b.axpy(1.0, &g.backward(b, params, tc, &dg, grads)?, dx);
            }
            _ => unreachable!("a layer's cache always matches its gate"),
        }
        Ok(())
    }
}

/// What follows a gate in one layer of a gated network: the modular product and whatever the
/// network puts after it (a ReLU, pooling). [`gated_forward`] and [`gated_backward`] run the
/// gates and the bookkeeping every gated stack shares around the bodies.
pub(crate) trait GatedLayer<B: Backend> {
    /// What the body keeps for its backward.
    type Cache;

    /// The layer's gate.
    fn gate(&self) -> &Gate;

    /// The body's forward over `h` routed by `routing` (with top-k's gate weights `gates`):
    /// the layer's output and its cache. A body with a hidden activation pushes a copy of it
    /// to `kept` when given.
    #[allow(clippy::too_many_arguments)]
    fn forward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        h: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
        kept: Option<&mut Vec<B::Tensor>>,
        ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache);

    /// The body's backward from its output gradient `dy`: the gradient of its input and of
    /// the gate weights (top-k only).
    fn backward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: Self::Cache,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>);
}

/// One gated layer's forward state: its gate's, its routing and its body's.
pub(crate) struct GatedCache<B: Backend, C> {
    gate: GateCache<B>,
    routing: Routing,
    body: C,
}

/// The forward pass of a stack of gated layers, before the network's output layer.
pub(crate) struct GatedStack<B: Backend, C> {
    /// The last layer's output.
    pub output: B::Tensor,
    /// `log p(a | x)` per row summed over the controller-gated layers, `[n, 1]`.
    pub ctrl_logp: B::Tensor,
    /// The selection of each layer.
    pub selections: Vec<Selection>,
    /// Each layer's state for [`gated_backward`].
    pub caches: Vec<GatedCache<B, C>>,
    /// The hidden activations the bodies kept (when asked to).
    pub hidden: Vec<B::Tensor>,
    /// The controllers' mean statistics (when asked for).
    pub stats: Option<ControllerStats>,
}

/// Runs `layers` over `x`: each layer's gate routes its input (asking `route` for a
/// controller's selection, see [`FeedForward::forward_tensors`]), then its body runs.
///
/// # Errors
/// Device failures and a `route` that fails.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_forward<B: Backend, L: GatedLayer<B>>(
    layers: &[L],
    b: &B,
    params: &ParamStore<B>,
    x: &B::Tensor,
    route: &mut Router<'_, B>,
    stats: bool,
    hidden: bool,
    ctx: &mut Ctx,
) -> Result<GatedStack<B, L::Cache>, BackendError> {
    let n = b.shape(x)[0];
    let mut h = b.duplicate(x);
    let mut ctrl_logp = b.zeros([n, 1]);
    let mut selections = Vec::with_capacity(layers.len());
    let mut caches = Vec::with_capacity(layers.len());
    let mut kept = Vec::new();
    let mut stat_sum = StatSum::default();
    for (l, layer) in layers.iter().enumerate() {
        let gated = layer.gate().route(
            b,
            params,
            &h,
            l,
            route,
            stats.then_some(&mut stat_sum),
            &mut ctrl_logp,
            ctx,
        )?;
        selections.push(gated.selection);
        let (next, body) = layer.forward_body(
            b,
            params,
            &h,
            &gated.routing,
            gated.gates.as_ref(),
            hidden.then_some(&mut kept),
            ctx,
        );
        h = next;
        caches.push(GatedCache {
            gate: gated.cache,
            routing: gated.routing,
            body,
        });
    }
    Ok(GatedStack {
        output: h,
        ctrl_logp,
        selections,
        caches,
        hidden: kept,
        stats: stats.then(|| stat_sum.mean()),
    })
}

/// The backward of [`gated_forward`] from the gradient `dh` of the last layer's output and the
/// controllers' `d_ctrl` (see [`Gate::backward`]): the gradient of the stack's input.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_backward<B: Backend, L: GatedLayer<B>>(
    layers: &[L],
    b: &B,
    params: &ParamStore<B>,
    caches: Vec<GatedCache<B, L::Cache>>,
    mut dh: B::Tensor,
    d_ctrl: &B::Tensor,
    importance_weight: f32,
    grads: &mut Grads<B>,
) -> Result<B::Tensor, BackendError> {
    for (layer, c) in layers.iter().zip(caches).rev() {
        let (mut dx, d_gates) = layer.backward_body(b, params, &c.routing, c.body, &dh, grads);
        layer.gate().backward(
            b,
            params,
            c.gate,
            d_gates,
            d_ctrl,
            importance_weight,
            &mut dx,
            grads,
        )?;
        dh = dx;
    }
    Ok(dh)
}

/// What a stack of gated layers under a linear classifier keeps for backward (the image
/// networks: [`crate::models::ConvNet`], [`crate::models::GroupNet`]).
pub struct ClassifiedCache<B: Backend, C> {
    layers: Vec<GatedCache<B, C>>,
    classifier: B::Tensor,
    loss: LossCache<B>,
}

impl<B: Backend, C> std::fmt::Debug for ClassifiedCache<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifiedCache")
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// The forward pass of gated `layers` (see [`gated_forward`]) and then `classifier`, its
/// logits scored against `target`; no penalty.
///
/// # Errors
/// Device failures and a `route` that fails.
#[allow(clippy::too_many_arguments)]
pub(crate) fn classified_forward<B: Backend, L: GatedLayer<B>>(
    layers: &[L],
    classifier: &Linear,
    b: &B,
    params: &ParamStore<B>,
    x: &B::Tensor,
    target: &Target<B>,
    route: &mut Router<'_, B>,
    stats: bool,
    hidden: bool,
    ctx: &mut Ctx,
) -> Result<MlpOutput<B, ClassifiedCache<B, L::Cache>>, BackendError> {
    let stack = gated_forward(layers, b, params, x, route, stats, hidden, ctx)?;
    let (logits, classifier) = classifier.forward(b, params, &stack.output, ctx);
    let (task_nll, loss) = output_loss(b, &logits, target);
    Ok(MlpOutput {
        task_nll,
        ctrl_logp: stack.ctrl_logp,
        selections: stack.selections,
        prediction: logits,
        stats: stack.stats,
        penalty: 0.0,
        hidden: stack.hidden,
        cache: ClassifiedCache {
            layers: stack.caches,
            classifier,
            loss,
        },
    })
}

/// The backward of [`classified_forward`] (see [`FeedForward::backward_tensors`]), with
/// top-k's importance loss weighted by `importance_weight`.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub(crate) fn classified_backward<B: Backend, L: GatedLayer<B>>(
    layers: &[L],
    classifier: &Linear,
    importance_weight: f32,
    b: &B,
    params: &ParamStore<B>,
    cache: ClassifiedCache<B, L::Cache>,
    d_task: &B::Tensor,
    d_ctrl: &B::Tensor,
    grads: &mut Grads<B>,
) -> Result<(), BackendError> {
    let d_logits = cache.loss.backward(b, d_task);
    let dh = classifier.backward(b, params, cache.classifier, &d_logits, grads);
    gated_backward(
        layers,
        b,
        params,
        cache.layers,
        dh,
        d_ctrl,
        importance_weight,
        grads,
    )?;
    Ok(())
}

/// The output distribution's state for the backward pass.
pub(crate) enum LossCache<B: Backend> {
    Regression {
        prediction: B::Tensor,
        y: B::Tensor,
        variance: f32,
    },
    Classes {
        log_probs: B::Tensor,
        targets: Vec<u32>,
    },
}

/// `-log p(y | ., a)` per row (`[n, 1]`) of the network output `h` under `target`'s
/// distribution, and what its backward needs.
pub(crate) fn output_loss<B: Backend>(
    b: &B,
    h: &B::Tensor,
    target: &Target<B>,
) -> (B::Tensor, LossCache<B>) {
    match target {
        Target::Regression { y, variance } => (
            gaussian_nll(b, h, y, *variance),
            LossCache::Regression {
                prediction: b.duplicate(h),
                y: b.duplicate(y),
                variance: *variance,
            },
        ),
        Target::Classes(t) => {
            let (nll, log_probs) = softmax_cross_entropy(b, b.duplicate(h), t);
            (
                nll,
                LossCache::Classes {
                    log_probs,
                    targets: t.clone(),
                },
            )
        }
        // The mask is a constant offset, so the logits' gradient is the masked softmax's.
        Target::ClassesAmong { labels, mask } => {
            let masked = b.binary(BinaryOp::Add, h, mask);
            let (nll, log_probs) = softmax_cross_entropy(b, masked, labels);
            (
                nll,
                LossCache::Classes {
                    log_probs,
                    targets: labels.clone(),
                },
            )
        }
    }
}

impl<B: Backend> LossCache<B> {
    /// The gradient with respect to the network output for row weights `d_task` (`[n, 1]`).
    pub fn backward(&self, b: &B, d_task: &B::Tensor) -> B::Tensor {
        match self {
            LossCache::Regression {
                prediction,
                y,
                variance,
            } => gaussian_nll_backward(b, prediction, y, *variance, d_task),
            LossCache::Classes { log_probs, targets } => {
                softmax_cross_entropy_backward(b, log_probs, targets, d_task)
            }
        }
    }
}

/// What a feed-forward network's forward pass reads: inputs `[n, d_in]` and their targets.
#[derive(Debug)]
pub struct MlpInput<B: Backend> {
    /// Inputs.
    pub x: B::Tensor,
    /// Targets.
    pub target: Target<B>,
}

/// A feed-forward network's forward pass on the device: per-row terms as tensors and the
/// prediction.
#[derive(Debug)]
pub struct MlpOutput<B: Backend, C> {
    /// `-log p(y | x, a)` per row, `[n, 1]`.
    pub task_nll: B::Tensor,
    /// `log p(a | x)` per row summed over modular layers, `[n, 1]` (zeros for noisy top-k
    /// gates, which are not distributions, and for networks without modular layers).
    pub ctrl_logp: B::Tensor,
    /// The selection used at each modular layer.
    pub selections: Vec<Selection>,
    /// The network's output (predicted mean or logits).
    pub prediction: B::Tensor,
    /// Controller diagnostics, when requested.
    pub stats: Option<ControllerStats>,
    /// The mean over rows of a penalty the network adds to its objective itself (its L1
    /// penalties; 0 without).
    pub penalty: f64,
    /// Each hidden layer's activations after its non-linearity, when requested.
    pub hidden: Vec<B::Tensor>,
    /// State for the backward pass.
    pub cache: C,
}

/// A feed-forward network: a stack of layers, modular or not, over one batch of rows. The
/// networks' [`crate::Model`] implementations are [`forward`], [`backward`] and
/// [`score_candidates`] over it.
pub trait FeedForward<B: Backend> {
    /// What the forward pass keeps for backward.
    type Cache;

    /// `(M, K)` of each modular layer, in forward order (empty without modular layers).
    fn layer_shapes(&self) -> Vec<(usize, usize)>;

    /// Forward pass over `x` with targets `target`, asking `route` for each controller-gated
    /// layer's selection (so sampling through it is ancestral over the layers). With `stats`,
    /// also summarises the controllers' distributions; with `hidden`, keeps each hidden
    /// layer's activations.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    #[allow(clippy::too_many_arguments)]
    fn forward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        target: &Target<B>,
        route: &mut Router<'_, B>,
        stats: bool,
        hidden: bool,
        ctx: &mut Ctx,
    ) -> Result<MlpOutput<B, Self::Cache>, BackendError>;

    /// Backward pass for the objective `sum_i d_task[i] * (task_nll[i] + penalty_i) +
    /// d_ctrl[i] * ctrl_logp[i]` plus top-k's importance loss; accumulates every parameter
    /// gradient.
    ///
    /// # Errors
    /// Device failures.
    fn backward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: Self::Cache,
        d_task: &B::Tensor,
        d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError>;
}

/// A feed-forward network's forward state as [`crate::Model`] keeps it: the network's own and
/// the batch's rows.
pub struct FfCache<C> {
    inner: C,
    rows: usize,
}

impl<C> std::fmt::Debug for FfCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfCache").field("rows", &self.rows).finish()
    }
}

/// [`crate::Model::forward`] of a feed-forward network.
///
/// # Errors
/// Device failures, and whatever the router returns.
pub fn forward<B: Backend, N: FeedForward<B>>(
    net: &N,
    b: &B,
    params: &ParamStore<B>,
    input: &MlpInput<B>,
    routes: Routes<'_, '_, B>,
    stats: bool,
    ctx: &mut Ctx,
) -> Result<Forward<B, FfCache<N::Cache>>, BackendError> {
    let (x, t) = (&input.x, &input.target);
    let out = match routes {
        Routes::Stored(stored) => {
            let mut route = |l: usize, _: &ControllerOutput<B>| Ok(stored[l].clone());
            net.forward_tensors(b, params, x, t, &mut route, stats, false, ctx)?
        }
        Routes::Chosen(route) => net.forward_tensors(b, params, x, t, route, stats, false, ctx)?,
        Routes::Guided { .. } => {
            unreachable!("guided routes are a sequence-model setting; no feed-forward task sets it")
        }
    };
    let usage = out
        .selections
        .iter()
        .zip(net.layer_shapes())
        .map(|(s, (m, _))| usage_counts([s], m))
        .collect();
    let rows = b.shape(x)[0];
    Ok(Forward {
        nll: b.download(&out.task_nll)?,
        log_p: b.download(&out.ctrl_logp)?,
        selections: out.selections,
        usage,
        stats: out.stats,
        importance: out.penalty,
        episodes: Episodes::Rows,
        carry: None,
        cache: FfCache {
            inner: out.cache,
            rows,
        },
    })
}

/// [`crate::Model::backward`] of a feed-forward network.
///
/// # Errors
/// Device failures.
pub fn backward<B: Backend, N: FeedForward<B>>(
    net: &N,
    b: &B,
    params: &ParamStore<B>,
    cache: FfCache<N::Cache>,
    d_nll: f32,
    d_logp: &[f32],
    grads: &mut Grads<B>,
) -> Result<(), BackendError> {
    let n = cache.rows;
    let d_task = b.upload([n, 1], &vec![d_nll; n]);
    let d_ctrl = if d_logp.is_empty() {
        b.upload([n, 1], &vec![0.0; n])
    } else {
        b.upload([n, 1], d_logp)
    };
    net.backward_tensors(b, params, cache.inner, &d_task, &d_ctrl, grads)
}

/// [`crate::Model::score_candidates`] of a feed-forward network: one routed forward pass of
/// the batch per candidate, candidate 0 along the stored selections and the others drawn
/// from the controllers, each example's from its own stream.
///
/// The candidates go through one at a time rather than as one batch `samples` times taller:
/// the same FLOPs, but a conv net's patch matrices for 10 x 128 images are hundreds of MiB,
/// freshly allocated and page-faulted at every E-step (a fifth of the E-step's time under
/// `perf`), while one batch's fit the allocator's reused blocks and the caches.
///
/// # Errors
/// Device failures.
#[allow(clippy::too_many_arguments)]
pub fn score_candidates<B: Backend, N: FeedForward<B>>(
    net: &N,
    b: &B,
    params: &ParamStore<B>,
    input: &MlpInput<B>,
    stored: &[Selection],
    keys: &[u32],
    estep: &EStepSettings,
    rng: &mut ChaCha8Rng,
    ctx: &mut Ctx,
) -> Result<Candidates, BackendError> {
    // Task validation keeps per-step search to sequence models; a feed-forward network's
    // candidates are whole selections.
    let samples = estep.samples;
    let base: u64 = rng.random();
    let mut scores = Vec::with_capacity(samples * keys.len());
    let mut per_candidate = Vec::with_capacity(samples);
    for candidate in 0..samples {
        // Candidate 0 follows the stored selections; the others are drawn given the
        // candidate's own earlier-layer choices (ancestral sampling).
        let mut streams = (candidate > 0).then(|| example_streams(base, candidate, keys));
        let mut route = |l: usize, out: &ControllerOutput<B>| match &mut streams {
            None => Ok(stored[l].clone()),
            Some(streams) => propose_per_example(b, out, estep.uniform, streams),
        };
        let (x, t) = (&input.x, &input.target);
        let out = net.forward_tensors(b, params, x, t, &mut route, false, false, ctx)?;
        let task = b.download(&out.task_nll)?;
        let logp = b.download(&out.ctrl_logp)?;
        scores.extend(
            task.iter()
                .zip(&logp)
                .map(|(&t, &l)| -(t as f64) + l as f64),
        );
        per_candidate.push(out.selections);
    }
    // Group l's selection over all candidate rows, candidate-major.
    let selections = (0..per_candidate.first().map_or(0, Vec::len))
        .map(|l| Selection::concat(&per_candidate.iter().map(|c| &c[l]).collect::<Vec<_>>()))
        .collect();
    Ok(Candidates {
        samples,
        scores,
        selections,
    })
}

/// Implements [`crate::Model`] for a [`FeedForward`] network type (one with an inherent
/// `layer_shapes`) over the backends of `bound`, by [`forward`], [`backward`] and
/// [`score_candidates`].
macro_rules! feed_forward_model {
    ($net:ty, $bound:path) => {
        impl<B: $bound> $crate::model::Model<B> for $net {
            type Input = $crate::models::feedforward::MlpInput<B>;
            type Cache = $crate::models::feedforward::FfCache<
                <$net as $crate::models::feedforward::FeedForward<B>>::Cache,
            >;

            fn table_shapes(&self) -> Vec<(usize, usize)> {
                self.layer_shapes()
            }

            fn forward(
                &self,
                b: &B,
                params: &modula_nn::ParamStore<B>,
                input: &Self::Input,
                routes: $crate::model::Routes<'_, '_, B>,
                stats: bool,
                ctx: &mut modula_nn::Ctx,
            ) -> Result<$crate::model::Forward<B, Self::Cache>, modula_tensor::BackendError> {
                $crate::models::feedforward::forward(self, b, params, input, routes, stats, ctx)
            }

            fn backward(
                &self,
                b: &B,
                params: &modula_nn::ParamStore<B>,
                cache: Self::Cache,
                d_nll: f32,
                d_logp: &[f32],
                grads: &mut modula_nn::Grads<B>,
            ) -> Result<(), modula_tensor::BackendError> {
                $crate::models::feedforward::backward(self, b, params, cache, d_nll, d_logp, grads)
            }

            fn score_candidates(
                &self,
                b: &B,
                params: &modula_nn::ParamStore<B>,
                input: &Self::Input,
                stored: &[modula_modular::Selection],
                keys: &[u32],
                estep: &$crate::config::EStepSettings,
                rng: &mut rand_chacha::ChaCha8Rng,
                ctx: &mut modula_nn::Ctx,
            ) -> Result<$crate::model::Candidates, modula_tensor::BackendError> {
                $crate::models::feedforward::score_candidates(
                    self, b, params, input, stored, keys, estep, rng, ctx,
                )
            }

            fn samples_per_example(&self) -> bool {
                true
            }
        }
    };
}
pub(crate) use feed_forward_model;

/// Implements [`FeedForward`] for a network type of gated layers under a linear classifier
/// (fields `layers`, `classifier` and `importance_weight`, an inherent `layer_shapes`) whose
/// forward pass caches `$cache<B>`, by [`classified_forward`] and [`classified_backward`].
macro_rules! classified_feed_forward {
    ($net:ty, $cache:ident) => {
        impl<B: modula_tensor::Backend> $crate::models::feedforward::FeedForward<B> for $net {
            type Cache = $cache<B>;

            fn layer_shapes(&self) -> Vec<(usize, usize)> {
                <$net>::layer_shapes(self)
            }

            fn forward_tensors(
                &self,
                b: &B,
                params: &modula_nn::ParamStore<B>,
                x: &B::Tensor,
                target: &$crate::model::Target<B>,
                route: &mut $crate::model::Router<'_, B>,
                stats: bool,
                hidden: bool,
                ctx: &mut modula_nn::Ctx,
            ) -> Result<
                $crate::models::feedforward::MlpOutput<B, $cache<B>>,
                modula_tensor::BackendError,
            > {
                $crate::models::feedforward::classified_forward(
                    &self.layers,
                    &self.classifier,
                    b,
                    params,
                    x,
                    target,
                    route,
                    stats,
                    hidden,
                    ctx,
                )
            }

            fn backward_tensors(
                &self,
                b: &B,
                params: &modula_nn::ParamStore<B>,
                cache: $cache<B>,
                d_task: &B::Tensor,
                d_ctrl: &B::Tensor,
                grads: &mut modula_nn::Grads<B>,
            ) -> Result<(), modula_tensor::BackendError> {
                $crate::models::feedforward::classified_backward(
                    &self.layers,
                    &self.classifier,
                    self.importance_weight,
                    b,
                    params,
                    cache,
                    d_task,
                    d_ctrl,
                    grads,
                )
            }
        }
    };
}
pub(crate) use classified_feed_forward;
