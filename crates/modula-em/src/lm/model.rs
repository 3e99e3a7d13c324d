//! The word-level language model: embedding, a (modular, top-k gated or dense) GRU cell and a
//! softmax over the vocabulary, run over truncated-BPTT windows one time step at a time.

use modula_modular::{
    ControllerOutput, ModularCache, ModularGruCache, ModularGruCell, ModularLinear, Routing,
    Selection,
};
use modula_nn::{
    Ctx, Dropout, Embedding, Grads, GruCell, GruCellCache, GruGatesCache, Init, Linear, Module,
    ParamStore, gru_gates_backward, gru_gates_forward, softmax_cross_entropy,
    softmax_cross_entropy_backward,
};
use modula_tensor::{Backend, BackendError};
use rand::Rng;

use crate::lm::config::{LmModelConfig, Recurrent};
use crate::model::{ControllerStats, controller_stats};
use crate::topk::{TopKCache, TopKGate};

/// Chooses the selection of time step `t` from the controller's distributions. The window is
/// unrolled step by step, so sampling through it is ancestral in time.
pub type StepRouter<'r, B> =
    dyn FnMut(usize, &ControllerOutput<B>) -> Result<Selection, BackendError> + 'r;

/// The recurrent cell of a [`LanguageModel`].
#[derive(Clone, Debug)]
pub enum Cell {
    /// Modules chosen by a controller on `[x_t; h_{t-1}]` (EM and REINFORCE).
    Modular(ModularGruCell),
    /// Modules chosen and weighted by a noisy top-k gate on `[x_t; h_{t-1}]`.
    TopK(TopKGruCell),
    /// A standard dense GRU cell (PyTorch's formulation).
    Dense(GruCell),
}

/// A GRU cell whose gate pre-activations come from a modular layer on `[x_t; h_{t-1}]`
/// weighted by a noisy top-k gate on the same input (Shazeer et al. 2017).
#[derive(Clone, Debug)]
pub struct TopKGruCell {
    /// The gate.
    pub gate: TopKGate,
    /// Modules producing the `4h` gate pre-activations.
    pub layer: ModularLinear,
    /// Input width.
    pub d_in: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Weight of the importance loss, averaged over the window's steps.
    pub importance_weight: f32,
}

/// Word embedding, recurrent cell, softmax: `x_t = E[w_t]`, `h_t = cell(x_t, h_{t-1})`,
/// `p(w_{t+1} | .) = softmax(h_t W + b)`, with dropout on the embedding and on `h_t` before
/// the softmax (not on the recurrent path).
#[derive(Clone, Debug)]
pub struct LanguageModel {
    /// The word embedding.
    pub embedding: Embedding,
    /// The recurrent cell.
    pub cell: Cell,
    /// The output projection onto the vocabulary.
    pub output: Linear,
    /// Dropout on the embedding and on the states fed to the softmax.
    pub dropout: Dropout,
    /// Hidden width.
    pub hidden: usize,
}

/// Per-step state kept for the backward pass.
#[derive(Debug)]
enum StepCache<B: Backend> {
    Modular(Box<ModularGruCache<B>>),
    TopK(Box<TopKStepCache<B>>),
    Dense(GruCellCache<B>),
}

#[derive(Debug)]
struct TopKStepCache<B: Backend> {
    gate: TopKCache<B>,
    routing: Routing,
    layer: ModularCache<B>,
    gates: GruGatesCache<B>,
    /// Gradient of the importance loss with respect to the gate values (host, `[n, k]`).
    d_importance: Vec<f32>,
}

/// One step's output: the new state, `log p(a_t | .)` per row (controller cells), the
/// selection (modular cells), the cache and the step's importance loss (top-k).
struct StepResult<B: Backend> {
    h: B::Tensor,
    log_p: Option<Vec<f32>>,
    selection: Option<Selection>,
    cache: StepCache<B>,
    importance: f64,
}

/// What [`LanguageModel::backward_window`] needs from [`LanguageModel::forward_window`].
#[derive(Debug)]
pub struct WindowCache<B: Backend> {
    ids: Vec<Vec<u32>>,
    targets: Vec<u32>,
    embed_masks: Vec<Option<B::Tensor>>,
    steps: Vec<StepCache<B>>,
    out_masks: Vec<Option<B::Tensor>>,
    output: <Linear as Module<B>>::Cache,
    log_probs: B::Tensor,
    batch: usize,
}

/// The result of a forward pass over one window (`T` steps of `n` streams, time-major: entry
/// `t * n + i` is stream `i` at step `t`).
#[derive(Debug)]
pub struct WindowOutput<B: Backend> {
    /// `-log p(w_{t+1} | w_{<=t}, a)` per position, `[T * n]`.
    pub nll: Vec<f32>,
    /// `log p(a_t | x_t, h_{t-1})` per position (empty for cells without a controller).
    pub log_p: Vec<f32>,
    /// The selection of each step (empty for the dense cell).
    pub selections: Vec<Selection>,
    /// The last state `h_T`, `[n, hidden]` (detach it with `duplicate` to carry it on).
    pub h_last: B::Tensor,
    /// Controller entropies over the window, when requested.
    pub stats: Option<ControllerStats>,
    /// Mean importance loss over the window's steps (top-k only, else 0).
    pub importance: f64,
    /// State for [`LanguageModel::backward_window`].
    pub cache: WindowCache<B>,
}

/// `[x; h]` as one `[n, d_in + hidden]` tensor.
fn concat<B: Backend>(b: &B, x: &B::Tensor, h: &B::Tensor) -> B::Tensor {
    let ([n, dx], dh) = (b.shape(x), b.shape(h)[1]);
    let mut xh = b.zeros([n, dx + dh]);
    b.copy_cols(x, 0, &mut xh, 0, dx, false);
    b.copy_cols(h, 0, &mut xh, dx, dh, false);
    xh
}

/// Splits `d[x; h]` into `dx` and adds its `h` part onto `dh_prev`.
fn split<B: Backend>(b: &B, dxh: &B::Tensor, d_in: usize, dh_prev: &mut B::Tensor) -> B::Tensor {
    let n = b.shape(dxh)[0];
    let hidden = b.shape(dh_prev)[1];
    let mut dx = b.zeros([n, d_in]);
    b.copy_cols(dxh, 0, &mut dx, 0, d_in, false);
    b.copy_cols(dxh, d_in, dh_prev, 0, hidden, true);
    dx
}

impl LanguageModel {
    /// Builds the model for a vocabulary of `vocab` words; `recurrent` picks the cell
    /// (`Recurrent::Dense { hidden }` ignores `config.hidden`).
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        config: &LmModelConfig,
        recurrent: Recurrent,
        vocab: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let d = config.embed;
        let embedding =
            Embedding::new(b, params, "embed", vocab, d, Init::Normal { std: 0.1 }, rng);
        let (cell, hidden) = match recurrent {
            Recurrent::Modular { modules, k } => {
                let mut cell =
                    ModularGruCell::new(b, params, "gru", d, config.hidden, modules, k, rng);
                cell.controller_input_grad = config.controller_input_grad;
                (Cell::Modular(cell), config.hidden)
            }
            Recurrent::TopK {
                modules,
                k,
                importance_weight,
            } => {
                let gate = TopKGate::new(b, params, "gru.gate", d + config.hidden, modules, k, rng);
                let layer = ModularLinear::new(
                    b,
                    params,
                    "gru.modules",
                    modules,
                    d + config.hidden,
                    4 * config.hidden,
                    rng,
                );
                let cell = TopKGruCell {
                    gate,
                    layer,
                    d_in: d,
                    hidden: config.hidden,
                    importance_weight,
                };
                (Cell::TopK(cell), config.hidden)
            }
            Recurrent::Dense { hidden } => (
                Cell::Dense(GruCell::new(b, params, "gru", d, hidden, Init::Glorot, rng)),
                hidden,
            ),
        };
        let output = Linear::new(b, params, "softmax", hidden, vocab, Init::Glorot, rng);
        LanguageModel {
            embedding,
            cell,
            output,
            dropout: Dropout::new(config.dropout),
            hidden,
        }
    }

    /// `(M, K)` of the cell's modular layer, if it has one.
    pub fn modular_shape(&self) -> Option<(usize, usize)> {
        match &self.cell {
            Cell::Modular(c) => Some((c.controller.modules, c.controller.k)),
            Cell::TopK(c) => Some((c.gate.modules, c.gate.k)),
            Cell::Dense(_) => None,
        }
    }

    /// Multiply-adds per token of one forward pass, times two: the FLOPs the model spends per
    /// predicted word (the embedding lookup and the elementwise gates are left out; they are
    /// `O(hidden)` next to the `O(hidden * (d + hidden + vocab))` products).
    pub fn flops_per_token(&self) -> u64 {
        let vocab = self.embedding.vocab as u64;
        let h = self.hidden as u64;
        let cell = match &self.cell {
            Cell::Modular(c) => {
                let (d, m, k) = (
                    c.d_in as u64,
                    c.controller.modules as u64,
                    c.controller.k as u64,
                );
                // K modules of (d + h) x 4h, plus the controller's (d + h) x KM logits.
                k * (d + h) * 4 * h + (d + h) * k * m
            }
            Cell::TopK(c) => {
                let (d, m, k) = (c.d_in as u64, c.gate.modules as u64, c.gate.k as u64);
                k * (d + h) * 4 * h + 2 * (d + h) * m
            }
            Cell::Dense(c) => (c.d_in as u64 + h) * 3 * h,
        };
        2 * (cell + h * vocab)
    }

    /// One step of the cell from `x [n, d]` and `h_prev [n, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn step<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        t: usize,
        x: &B::Tensor,
        h_prev: &B::Tensor,
        route: &mut StepRouter<'_, B>,
        stats: Option<&mut Vec<f32>>,
        ctx: &mut Ctx,
    ) -> Result<StepResult<B>, BackendError> {
        match &self.cell {
            Cell::Modular(cell) => {
                let prepared = cell.prepare(b, params, x, h_prev);
                if let Some(acc) = stats {
                    acc.extend(b.download(&prepared.controller.log_probs)?);
                }
                let selection = route(t, &prepared.controller)?;
                let (h, log_p, cache) = cell.finish(b, params, prepared, h_prev, selection.clone());
                Ok(StepResult {
                    h,
                    log_p: Some(b.download(&log_p)?),
                    selection: Some(selection),
                    cache: StepCache::Modular(Box::new(cache)),
                    importance: 0.0,
                })
            }
            Cell::TopK(cell) => {
                let xh = concat(b, x, h_prev);
                let (selection, gate_values, gate) = cell.gate.forward(b, params, &xh, ctx)?;
                let routing = Routing::new(&selection, cell.gate.modules);
                let (pre, layer) = cell
                    .layer
                    .forward(b, params, &xh, &routing, Some(&gate_values));
                let (h, gates) = gru_gates_forward(b, &pre, h_prev);
                let (loss, d_importance) = cell.gate.importance_loss(&gate, cell.importance_weight);
                let cache = TopKStepCache {
                    gate,
                    routing,
                    layer,
                    gates,
                    d_importance,
                };
                Ok(StepResult {
                    h,
                    log_p: None,
                    selection: Some(selection),
                    cache: StepCache::TopK(Box::new(cache)),
                    importance: loss as f64,
                })
            }
            Cell::Dense(cell) => {
                let (h, cache) = cell.step(b, params, x, h_prev);
                Ok(StepResult {
                    h,
                    log_p: None,
                    selection: None,
                    cache: StepCache::Dense(cache),
                    importance: 0.0,
                })
            }
        }
    }

    /// Backward of one step: accumulates parameter gradients, returns `(dx, dh_prev)`.
    /// `importance_scale` multiplies the top-k importance gradient (1 / T: the loss is the
    /// mean over the window's steps).
    #[allow(clippy::too_many_arguments)]
    fn step_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: StepCache<B>,
        dh: &B::Tensor,
        d_logp: &[f32],
        importance_scale: f32,
        grads: &mut Grads<B>,
    ) -> Result<(B::Tensor, B::Tensor), BackendError> {
        match (&self.cell, cache) {
            (Cell::Modular(cell), StepCache::Modular(cache)) => {
                let d_logp = b.upload([d_logp.len(), 1], d_logp);
                Ok(cell.step_backward(b, params, *cache, dh, &d_logp, grads))
            }
            (Cell::TopK(cell), StepCache::TopK(cache)) => {
                let cache = *cache;
                let (d_pre, mut dh_prev) = gru_gates_backward(b, &cache.gates, dh);
                let (mut dxh, d_gates) =
                    cell.layer
                        .backward(b, params, &cache.routing, cache.layer, &d_pre, grads);
                let mut d_gates = b.download(&d_gates.expect("the top-k layer has gates"))?;
                for (g, d) in d_gates.iter_mut().zip(&cache.d_importance) {
                    *g += importance_scale * d;
                }
                let dxh_gate = cell.gate.backward(b, params, cache.gate, &d_gates, grads)?;
                b.axpy(1.0, &dxh_gate, &mut dxh);
                let dx = split(b, &dxh, cell.d_in, &mut dh_prev);
                Ok((dx, dh_prev))
            }
            (Cell::Dense(cell), StepCache::Dense(cache)) => {
                Ok(cell.step_backward(b, params, cache, dh, grads))
            }
            _ => unreachable!("a step cache always comes from the model's own cell"),
        }
    }

    /// Forward pass over a window: `ids[t]` are the `n` input words of step `t`, `targets`
    /// the next words (time-major, `T * n`), `h0` the carried state. `route` picks each
    /// step's selection (unused by top-k and dense cells). Dropout is active when
    /// `ctx.train`. With `stats`, the controller's entropies are summarised.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    ///
    /// # Panics
    /// If `targets.len() != T * n`, or a shape disagrees with the model.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_window<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        route: &mut StepRouter<'_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<WindowOutput<B>, BackendError> {
        let n = b.shape(h0)[0];
        let steps = ids.len();
        assert_eq!(targets.len(), steps * n, "one target per input word");
        let mut stat_acc = stats.then(Vec::new);
        let mut h = b.duplicate(h0);
        let mut stacked = b.zeros([steps * n, self.hidden]);
        let (mut embed_masks, mut out_masks) = (Vec::new(), Vec::new());
        let (mut step_caches, mut selections, mut log_p) = (Vec::new(), Vec::new(), Vec::new());
        let mut importance = 0.0;
        for (t, step_ids) in ids.iter().enumerate() {
            let e = self.embedding.forward(b, params, step_ids);
            let (x, mask) = self.dropout.forward(b, params, &e, ctx);
            embed_masks.push(mask);
            let r = self.step(b, params, t, &x, &h, route, stat_acc.as_mut(), ctx)?;
            let h_next = r.h;
            importance += r.importance;
            step_caches.push(r.cache);
            log_p.extend(r.log_p.unwrap_or_default());
            selections.extend(r.selection);
            let (dropped, mask) = self.dropout.forward(b, params, &h_next, ctx);
            out_masks.push(mask);
            let rows: Vec<u32> = (t * n..(t + 1) * n).map(|r| r as u32).collect();
            b.scatter_add_rows(&mut stacked, &dropped, &rows);
            h = h_next;
        }
        let (logits, output) = self.output.forward(b, params, &stacked, ctx);
        let (nll, log_probs) = softmax_cross_entropy(b, logits, targets);
        let stats = match (stat_acc, self.modular_shape()) {
            (Some(acc), Some((m, k))) => Some(controller_stats(&acc, m, k)),
            _ => None,
        };
        Ok(WindowOutput {
            nll: b.download(&nll)?,
            log_p,
            selections,
            h_last: h,
            stats,
            importance: importance / steps.max(1) as f64,
            cache: WindowCache {
                ids: ids.to_vec(),
                targets: targets.to_vec(),
                embed_masks,
                steps: step_caches,
                out_masks,
                output,
                log_probs,
                batch: n,
            },
        })
    }

    /// Backpropagation through the window for the objective
    /// `sum_j d_nll * nll[j] + d_logp[j] * log_p[j]` (plus the top-k importance loss, which
    /// the model adds itself); accumulates every parameter gradient. The gradient into the
    /// carried state `h0` is dropped (truncated BPTT).
    ///
    /// # Errors
    /// Device failures.
    ///
    /// # Panics
    /// If `d_logp` is neither empty nor one value per position.
    pub fn backward_window<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: WindowCache<B>,
        d_nll: f32,
        d_logp: &[f32],
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        let n = cache.batch;
        let steps = cache.steps.len();
        assert!(
            d_logp.is_empty() || d_logp.len() == steps * n,
            "d_logp must hold one value per position"
        );
        let d_nll = b.upload([steps * n, 1], &vec![d_nll; steps * n]);
        let d_logits = softmax_cross_entropy_backward(b, &cache.log_probs, &cache.targets, &d_nll);
        let d_stacked = self
            .output
            .backward(b, params, cache.output, &d_logits, grads);
        let zeros = vec![0.0; n];
        let mut carry: Option<B::Tensor> = None;
        let parts = cache
            .steps
            .into_iter()
            .zip(cache.embed_masks)
            .zip(cache.out_masks)
            .enumerate()
            .rev();
        for (t, ((step, embed_mask), out_mask)) in parts {
            let rows: Vec<u32> = (t * n..(t + 1) * n).map(|r| r as u32).collect();
            let d_out = b.gather_rows(&d_stacked, &rows);
            let mut dh = self.dropout.backward(b, params, out_mask, &d_out, grads);
            if let Some(c) = &carry {
                b.axpy(1.0, c, &mut dh);
            }
            let dl = if d_logp.is_empty() {
                &zeros[..]
            } else {
                &d_logp[t * n..(t + 1) * n]
            };
            let (dx, dh_prev) =
                self.step_backward(b, params, step, &dh, dl, 1.0 / steps as f32, grads)?;
            let de = self.dropout.backward(b, params, embed_mask, &dx, grads);
            self.embedding.backward(b, &cache.ids[t], &de, grads);
            carry = Some(dh_prev);
        }
        Ok(())
    }

    /// Scores `samples` candidate selection paths per stream through a window without dropout
    /// (EM's E-step): candidate 0 follows `stored[t]`, the others are drawn ancestrally from
    /// the controller, each along its own states. Returns, per candidate row `s * n + i`, the
    /// score `sum_t log p(w_{t+1} | ., a) + log p(a_t | .)` and each step's selections over
    /// all `samples * n` rows.
    ///
    /// # Errors
    /// Device failures.
    ///
    /// # Panics
    /// If the cell is not [`Cell::Modular`] or a stored selection does not have `n` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn score_candidates<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        stored: &[Selection],
        samples: usize,
        rng: &mut impl Rng,
    ) -> Result<(Vec<f64>, Vec<Selection>), BackendError> {
        let Cell::Modular(cell) = &self.cell else {
            panic!("score_candidates needs a controller-routed modular cell");
        };
        let n = b.shape(h0)[0];
        let rep: Vec<u32> = (0..samples).flat_map(|_| 0..n as u32).collect();
        let mut h = b.gather_rows(h0, &rep);
        let mut scores = vec![0.0f64; samples * n];
        let mut chosen = Vec::with_capacity(ids.len());
        for (t, step_ids) in ids.iter().enumerate() {
            let words: Vec<u32> = rep.iter().map(|&i| step_ids[i as usize]).collect();
            let x = self.embedding.forward(b, params, &words);
            let prepared = cell.prepare(b, params, &x, &h);
            let drawn = prepared.controller.sample(b, rng)?;
            let k = stored[t].k();
            assert_eq!(
                stored[t].rows(),
                n,
                "stored selection of step {t} has the wrong rows"
            );
            let mut picks = stored[t].as_slice().to_vec();
            picks.extend_from_slice(&drawn.as_slice()[n * k..]);
            let selection = Selection::new(k, picks);
            let (h_next, log_p, _) = cell.finish(b, params, prepared, &h, selection.clone());
            let (logits, _) = self.output.forward(b, params, &h_next, &mut Ctx::eval());
            let step_targets: Vec<u32> = rep.iter().map(|&i| targets[t * n + i as usize]).collect();
            let (nll, _) = softmax_cross_entropy(b, logits, &step_targets);
            let (nll, log_p) = (b.download(&nll)?, b.download(&log_p)?);
            for (s, (l, p)) in scores.iter_mut().zip(nll.iter().zip(&log_p)) {
                *s += -(*l as f64) + *p as f64;
            }
            chosen.push(selection);
            h = h_next;
        }
        Ok((scores, chosen))
    }
}
