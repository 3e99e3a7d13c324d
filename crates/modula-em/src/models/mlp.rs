//! A stack of modular linear layers (ReLU between them): the network of the toy task, and
//! with `M = 1` the dense baselines.

use modula_modular::{
    Controller, ControllerOutput, ModularCache, ModularLinear, Routing, Selection,
};
use modula_nn::{Ctx, Grads, ParamStore};
use modula_nn::{
    gaussian_nll, gaussian_nll_backward, softmax_cross_entropy, softmax_cross_entropy_backward,
};
use modula_tensor::{Backend, BackendError, UnaryOp};
use rand::Rng;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Algo, ConfigError, DenseMatch, EStepSettings, invalid};
use crate::estep::propose;
use crate::model::{
    Candidates, ControllerStats, Episodes, Forward, Model, Router, Routes, Target,
    controller_stats, stored_then_drawn, usage_counts,
};
use crate::models::topk::{TopKCache, TopKGate};

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

/// How a layer chooses its modules.
#[derive(Clone, Debug)]
pub enum Gate {
    /// A controller defining `p(a | x)` (EM, REINFORCE, and trivially dense with `M = 1`).
    Controller(Controller),
    /// Noisy top-k gating with gate weights.
    TopK(TopKGate),
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

enum GateCache<B: Backend> {
    Controller(ControllerOutput<B>, Selection),
    TopK(TopKCache<B>),
}

struct LayerCache<B: Backend> {
    gate: GateCache<B>,
    routing: Routing,
    modules: ModularCache<B>,
    relu: Option<(B::Tensor, B::Tensor)>,
}

/// Forward state of a [`ModularMlp`].
pub struct MlpCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    loss: LossCache<B>,
    rows: usize,
}

impl<B: Backend> std::fmt::Debug for MlpCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlpCache")
            .field("layers", &self.layers.len())
            .finish()
    }
}

enum LossCache<B: Backend> {
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
                let gate = if algo == Algo::Topk {
                    Gate::TopK(TopKGate::new(
                        b,
                        params,
                        &format!("layer{l}.gate"),
                        i,
                        modules,
                        k,
                        rng,
                    ))
                } else {
                    Gate::Controller(Controller::new(
                        b,
                        params,
                        &format!("layer{l}.ctrl"),
                        i,
                        modules,
                        k,
                        rng,
                    ))
                };
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

/// What a [`ModularMlp`]'s forward pass reads: inputs `[n, d_in]` and their targets.
#[derive(Debug)]
pub struct MlpInput<B: Backend> {
    /// Inputs.
    pub x: B::Tensor,
    /// Targets.
    pub target: Target<B>,
}

/// A [`ModularMlp`] forward pass on the device: per-row terms as tensors and the prediction.
#[derive(Debug)]
pub struct MlpOutput<B: Backend> {
    /// `-log p(y | x, a)` per row, `[n, 1]`.
    pub task_nll: B::Tensor,
    /// `log p(a | x)` per row summed over modular layers, `[n, 1]` (zeros for noisy top-k
    /// gates, which are not distributions).
    pub ctrl_logp: B::Tensor,
    /// The selection used at each modular layer.
    pub selections: Vec<Selection>,
    /// The network's output (predicted mean or logits).
    pub prediction: B::Tensor,
    /// Controller diagnostics, when requested.
    pub stats: Option<ControllerStats>,
    /// State for the backward pass.
    pub cache: MlpCache<B>,
}

impl ModularMlp {
    /// `(M, K)` of each modular layer, in forward order.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.layers
            .iter()
            .map(|l| match &l.gate {
                Gate::Controller(c) => (c.modules, c.k),
                Gate::TopK(g) => (g.modules, g.k),
            })
            .collect()
    }

    /// Forward pass over `x` with targets `target`, asking `route` for each layer's selection
    /// (so sampling through it is ancestral over the layers). With `stats`, also summarises
    /// the controllers' distributions.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_tensors<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        target: &Target<B>,
        route: &mut Router<'_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<MlpOutput<B>, BackendError> {
        let n = b.shape(x)[0];
        let mut h = b.duplicate(x);
        let mut ctrl_logp = b.zeros([n, 1]);
        let mut selections = Vec::with_capacity(self.layers.len());
        let mut caches = Vec::with_capacity(self.layers.len());
        let (mut stat_sum, mut stat_layers) = (ControllerStats::default(), 0);
        for (l, layer) in self.layers.iter().enumerate() {
            let (routing, gate, gates) = match &layer.gate {
                Gate::Controller(c) => {
                    let out = c.forward(b, params, &h);
                    if stats {
                        let s = controller_stats(&b.download(&out.log_probs)?, c.modules, c.k);
                        stat_sum.mean_entropy += s.mean_entropy;
                        stat_sum.batch_entropy += s.batch_entropy;
                        stat_layers += 1;
                    }
                    let sel = route(l, &out)?;
                    b.axpy(1.0, &c.log_prob(b, &out, &sel), &mut ctrl_logp);
                    (
                        Routing::new(&sel, c.modules),
                        GateCache::Controller(out, sel),
                        None,
                    )
                }
                Gate::TopK(g) => {
                    let (sel, gates, cache) = g.forward(b, params, &h, ctx)?;
                    (
                        Routing::new(&sel, g.modules),
                        GateCache::TopK(cache),
                        Some(gates),
                    )
                }
            };
            selections.push(match &gate {
                GateCache::Controller(_, s) => s.clone(),
                GateCache::TopK(c) => c.selection().clone(),
            });
            let (y, modules) = layer
                .modules
                .forward(b, params, &h, &routing, gates.as_ref());
            let (next, relu) = if layer.relu {
                let a = b.unary(UnaryOp::Relu, &y);
                let keep = (y, b.duplicate(&a));
                (a, Some(keep))
            } else {
                (y, None)
            };
            h = next;
            caches.push(LayerCache {
                gate,
                routing,
                modules,
                relu,
            });
        }
        let (task_nll, loss) = match target {
            Target::Regression { y, variance } => (
                gaussian_nll(b, &h, y, *variance),
                LossCache::Regression {
                    prediction: b.duplicate(&h),
                    y: b.duplicate(y),
                    variance: *variance,
                },
            ),
            Target::Classes(t) => {
                let (nll, log_probs) = softmax_cross_entropy(b, b.duplicate(&h), t);
                (
                    nll,
                    LossCache::Classes {
                        log_probs,
                        targets: t.clone(),
                    },
                )
            }
        };
        let stats = stats.then(|| {
            let k = stat_layers.max(1) as f64;
            ControllerStats {
                mean_entropy: stat_sum.mean_entropy / k,
                batch_entropy: stat_sum.batch_entropy / k,
            }
        });
        Ok(MlpOutput {
            task_nll,
            ctrl_logp,
            selections,
            prediction: h,
            stats,
            cache: MlpCache {
                layers: caches,
                loss,
                rows: n,
            },
        })
    }

    /// Backward pass for the objective `sum_i d_task[i] * task_nll[i] + d_ctrl[i] *
    /// ctrl_logp[i]` plus top-k's importance loss; accumulates every parameter gradient.
    ///
    /// # Errors
    /// Device failures.
    pub fn backward_tensors<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: MlpCache<B>,
        d_task: &B::Tensor,
        d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        let mut dh = match &cache.loss {
            LossCache::Regression {
                prediction,
                y,
                variance,
            } => gaussian_nll_backward(b, prediction, y, *variance, d_task),
            LossCache::Classes { log_probs, targets } => {
                softmax_cross_entropy_backward(b, log_probs, targets, d_task)
            }
        };
        for (layer, c) in self.layers.iter().zip(cache.layers).rev() {
            if let Some((x, y)) = &c.relu {
                dh = b.unary_backward(UnaryOp::Relu, x, y, &dh);
            }
            let (mut dx, d_gates) = layer
                .modules
                .backward(b, params, &c.routing, c.modules, &dh, grads);
            match (&layer.gate, c.gate) {
                (Gate::Controller(ctrl), GateCache::Controller(out, sel)) => {
                    b.axpy(
                        1.0,
                        &ctrl.backward(b, params, out, &sel, d_ctrl, grads),
                        &mut dx,
                    );
                }
                (Gate::TopK(g), GateCache::TopK(tc)) => {
                    let mut dg = b.download(&d_gates.expect("top-k layers are gated"))?;
                    let (_, d_imp) = g.importance_loss(&tc, self.importance_weight);
                    dg.iter_mut().zip(d_imp).for_each(|(a, v)| *a += v);
                    b.axpy(1.0, &g.backward(b, params, tc, &dg, grads)?, &mut dx);
                }
                _ => unreachable!("a layer's cache always matches its gate"),
            }
            dh = dx;
        }
        Ok(())
    }
}

/// Row `s * n + i` of the result is row `i` of `batch` (candidate `s` of example `i`).
fn replicate<B: Backend>(b: &B, input: &MlpInput<B>, copies: usize) -> MlpInput<B> {
    let n = b.shape(&input.x)[0];
    let rows: Vec<u32> = (0..copies).flat_map(|_| 0..n as u32).collect();
    let target = match &input.target {
        Target::Regression { y, variance } => Target::Regression {
            y: b.gather_rows(y, &rows),
            variance: *variance,
        },
        Target::Classes(t) => Target::Classes(rows.iter().map(|&r| t[r as usize]).collect()),
    };
    MlpInput {
        x: b.gather_rows(&input.x, &rows),
        target,
    }
}

impl<B: Backend> Model<B> for ModularMlp {
    type Input = MlpInput<B>;
    type Cache = MlpCache<B>;

    fn table_shapes(&self) -> Vec<(usize, usize)> {
        self.layer_shapes()
    }

    fn forward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &MlpInput<B>,
        routes: Routes<'_, '_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<Forward<B, MlpCache<B>>, BackendError> {
        let (x, t) = (&input.x, &input.target);
        let out = match routes {
            Routes::Stored(stored) => {
                let mut route = |l: usize, _: &ControllerOutput<B>| Ok(stored[l].clone());
                self.forward_tensors(b, params, x, t, &mut route, stats, ctx)?
            }
            Routes::Chosen(route) => self.forward_tensors(b, params, x, t, route, stats, ctx)?,
        };
        let usage = out
            .selections
            .iter()
            .zip(self.layer_shapes())
            .map(|(s, (m, _))| usage_counts([s], m))
            .collect();
        Ok(Forward {
            nll: b.download(&out.task_nll)?,
            log_p: b.download(&out.ctrl_logp)?,
            selections: out.selections,
            usage,
            stats: out.stats,
            importance: 0.0,
            episodes: Episodes::Rows,
            carry: None,
            cache: out.cache,
        })
    }

    fn backward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: MlpCache<B>,
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
        self.backward_tensors(b, params, cache, &d_task, &d_ctrl, grads)
    }

    fn score_candidates(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &MlpInput<B>,
        stored: &[Selection],
        estep: &EStepSettings,
        rng: &mut ChaCha8Rng,
        ctx: &mut Ctx,
    ) -> Result<Candidates, BackendError> {
        // Task validation keeps per-step search to sequence models; a feed-forward network's
        // candidates are whole selections. They are just more rows: one routed pass scores all
        // of them.
        let samples = estep.samples;
        let rep = replicate(b, input, samples);
        let mut route = |l: usize, out: &ControllerOutput<B>| {
            // Candidate 0 of every example is its stored assignment; the rest are drawn from
            // the controller given the candidate's own earlier-layer choices.
            Ok(stored_then_drawn(
                &stored[l],
                &propose(b, out, estep.uniform, rng)?,
            ))
        };
        let out = self.forward_tensors(b, params, &rep.x, &rep.target, &mut route, false, ctx)?;
        let task = b.download(&out.task_nll)?;
        let logp = b.download(&out.ctrl_logp)?;
        let scores = task
            .iter()
            .zip(&logp)
            .map(|(&t, &l)| -(t as f64) + l as f64)
            .collect();
        Ok(Candidates {
            samples,
            scores,
            selections: out.selections,
        })
    }
}
