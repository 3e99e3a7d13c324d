//! A stack of modular linear layers (ReLU between them): the network of the toy task, and
//! with `M = 1` the dense baselines.

use modula_modular::{ModularCache, ModularLinear, Routing};
use modula_nn::{Ctx, Grads, ParamStore};
use modula_tensor::{Backend, BackendError, UnaryOp};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Algo, ConfigError, DenseMatch, invalid};
use crate::model::{Router, Target};
use crate::models::feedforward::{
    FeedForward, Gate, GatedCache, GatedLayer, LossCache, MlpOutput, feed_forward_model,
    gated_backward, gated_forward, output_loss,
};

/// Shape of a [`ModularMlp`] and its output distribution (the `[model]` section of a
/// feed-forward task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Modules per modular layer, `M`.
    pub modules: usize,
    /// Modules evaluated per input and layer, `K`.
    pub k: usize,
    /// Number of stacked modular layers (1 or more); hidden layers use ReLU.
    pub layers: usize,
    /// Width of the hidden layers (unused with one layer).
    pub hidden: usize,
    /// Variance of the Gaussian output distribution `p(y | x, a)` for regression.
    pub variance: f32,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            modules: 6,
            k: 1,
            layers: 1,
            hidden: 16,
            variance: 0.01,
        }
    }
}

impl MlpConfig {
    /// What [`ModularMlp::new`] builds for `algo`: modules and slots per layer, and the
    /// widths from `d_in` through the hidden layers to `d_out`.
    fn shape(
        &self,
        d_in: usize,
        d_out: usize,
        algo: Algo,
        dense_match: DenseMatch,
    ) -> (usize, usize, Vec<usize>) {
        let (modules, k) = match algo {
            Algo::Dense => (1, 1),
            Algo::Topk => (self.modules, self.k.max(2).min(self.modules)),
            _ => (self.modules, self.k),
        };
        let mut widths = vec![d_in];
        match (algo, dense_match) {
            (Algo::Dense, DenseMatch::Params) if self.layers == 1 => widths.push(self.modules),
            (Algo::Dense, DenseMatch::Params) => widths.extend(std::iter::repeat_n(
                self.hidden.saturating_mul(self.modules),
                self.layers - 1,
            )),
            _ => widths.extend(std::iter::repeat_n(self.hidden, self.layers - 1)),
        }
        widths.push(d_out);
        (modules, k, widths)
    }

    /// The trainable scalars of the network [`ModularMlp::new`] builds, counted without
    /// building it (saturating, so that absurd sizes stay comparable): per layer the modules'
    /// weights and biases and the gate (a controller's `K` heads, or top-k's clean and noise
    /// projections).
    pub fn parameters(
        &self,
        d_in: usize,
        d_out: usize,
        algo: Algo,
        dense_match: DenseMatch,
    ) -> usize {
        let (modules, k, widths) = self.shape(d_in, d_out, algo, dense_match);
        let linear = |i: usize, o: usize| i.saturating_mul(o).saturating_add(o);
        widths
            .windows(2)
            .map(|w| {
                let gate = if algo == Algo::Topk {
                    linear(w[0], modules).saturating_mul(2)
                } else {
                    linear(w[0], k.saturating_mul(modules))
                };
                linear(w[0], w[1])
                    .saturating_mul(modules)
                    .saturating_add(gate)
            })
            .fold(0, usize::saturating_add)
    }

    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.modules == 0 || self.modules > u16::MAX as usize {
            return Err(invalid(
                "model.modules",
                format!("is {}; use 1 to {}", self.modules, u16::MAX),
            ));
        }
        if self.k == 0 {
            return Err(invalid("model.k", "is 0; use at least 1 module per input"));
        }
        if self.k > self.modules {
            return Err(invalid(
                "model.k",
                format!(
                    "is {} but model.modules is {}; K must not exceed M",
                    self.k, self.modules
                ),
            ));
        }
        if self.layers == 0 {
            return Err(invalid("model.layers", "is 0; use at least 1"));
        }
        if self.layers > 1 && self.hidden == 0 {
            return Err(invalid(
                "model.hidden",
                "is 0; stacked layers need a positive hidden width",
            ));
        }
        if !(self.variance > 0.0 && self.variance.is_finite()) {
            return Err(invalid(
                "model.variance",
                format!("is {}; use a positive finite number", self.variance),
            ));
        }
        Ok(())
    }
}

/// One modular layer of the stack.
#[derive(Clone, Debug)]
pub struct MlpLayer {
    /// Module selection.
    pub gate: Gate,
    /// The modules.
    pub modules: ModularLinear,
    /// Whether a ReLU follows (every layer but the last).
    pub relu: bool,
}

/// A stack of modular linear layers (ReLU between them): the toy task's network, and with one
/// module per layer the dense baselines.
#[derive(Clone, Debug)]
pub struct ModularMlp {
    /// The layers, input first.
    pub layers: Vec<MlpLayer>,
    /// Weight of the noisy top-k importance loss.
    pub importance_weight: f32,
}

/// What a layer's body keeps: its modules' cache, and its ReLU's input.
type BodyCache<B> = (ModularCache<B>, Option<<B as Backend>::Tensor>);

/// Forward state of a [`ModularMlp`].
pub struct MlpCache<B: Backend> {
    layers: Vec<GatedCache<B, BodyCache<B>>>,
    loss: LossCache<B>,
}

impl<B: Backend> std::fmt::Debug for MlpCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlpCache")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl ModularMlp {
    /// Builds the network for `algo` from `d_in` inputs to `d_out` outputs.
    ///
    /// Modular algorithms use `model.layers` modular layers of `model.modules` modules
    /// (`model.hidden` wide between them). `Algo::Topk` gates with `max(K, 2)` modules.
    /// `Algo::Dense` uses one module per layer: matched in compute it keeps the widths; matched
    /// in parameters its hidden layers are `M` times wider, and a one-layer network gets a
    /// hidden ReLU layer of width `M` so that its parameter count is about the modular one's.
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        d_in: usize,
        d_out: usize,
        model: &MlpConfig,
        algo: Algo,
        dense_match: DenseMatch,
        importance_weight: f32,
        rng: &mut impl Rng,
    ) -> Self {
        let (modules, k, widths) = model.shape(d_in, d_out, algo, dense_match);
        let count = widths.len() - 1;
        let layers = (0..count)
            .map(|l| {
                let (i, o) = (widths[l], widths[l + 1]);
                let gate = Gate::new(b, params, &format!("layer{l}"), i, modules, k, algo, rng);
                let modules =
                    ModularLinear::new(b, params, &format!("layer{l}.modules"), modules, i, o, rng);
                MlpLayer {
                    gate,
                    modules,
                    relu: l + 1 < count,
                }
            })
            .collect();
        ModularMlp {
            layers,
            importance_weight,
        }
    }
}

impl ModularMlp {
    /// `(M, K)` of each modular layer, in forward order.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.layers.iter().map(|l| l.gate.shape()).collect()
    }
}

impl<B: Backend> FeedForward<B> for ModularMlp {
    type Cache = MlpCache<B>;

    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        ModularMlp::layer_shapes(self)
    }

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
    ) -> Result<MlpOutput<B, MlpCache<B>>, BackendError> {
        let stack = gated_forward(&self.layers, b, params, x, route, stats, hidden, ctx)?;
        let (task_nll, loss) = output_loss(b, &stack.output, target);
        Ok(MlpOutput {
            task_nll,
            ctrl_logp: stack.ctrl_logp,
            selections: stack.selections,
            prediction: stack.output,
            stats: stack.stats,
            penalty: 0.0,
            hidden: stack.hidden,
            cache: MlpCache {
                layers: stack.caches,
                loss,
            },
        })
    }

    fn backward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: MlpCache<B>,
        d_task: &B::Tensor,
        d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        let dy = cache.loss.backward(b, d_task);
        let importance = self.importance_weight;
        gated_backward(
            &self.layers,
            b,
            params,
            cache.layers,
            dy,
            d_ctrl,
            importance,
            grads,
        )?;
        Ok(())
    }
}

impl<B: Backend> GatedLayer<B> for MlpLayer {
    type Cache = BodyCache<B>;

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn forward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        h: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
        kept: Option<&mut Vec<B::Tensor>>,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, BodyCache<B>) {
        let (y, modules) = self.modules.forward(b, params, h, routing, gates);
        if !self.relu {
            return (y, (modules, None));
        }
        let a = b.unary(UnaryOp::Relu, &y);
        if let Some(kept) = kept {
            kept.push(b.duplicate(&a));
        }
        (a, (modules, Some(y)))
    }

    fn backward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        (modules, relu): BodyCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        // ReLU's slope is 1 exactly where its input is positive, which is also where its
        // output is, so the kept pre-activation stands for both (no copy of the output).
        let relu_dy = relu.map(|x| b.unary_backward(UnaryOp::Relu, &x, &x, dy));
        let dy = relu_dy.as_ref().unwrap_or(dy);
        self.modules
            .backward(b, params, routing, modules, dy, grads)
    }
}

feed_forward_model!(ModularMlp, Backend);
