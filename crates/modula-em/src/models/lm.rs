//! The word-level language model: embedding, a (modular, top-k gated or dense) GRU cell and a
//! softmax over the vocabulary, run over truncated-BPTT windows one time step at a time.

use modula_modular::{
    ModularCache, ModularGruCache, ModularGruCell, ModularGruModules, ModularGruModulesCache,
    Routing, Selection, SharedBase,
};
use modula_nn::{
    Ctx, Dropout, Embedding, Grads, GruCell, GruCellCache, Init, Linear, Module, ParamStore,
    softmax_cross_entropy, softmax_cross_entropy_backward,
};
use modula_tensor::{Backend, BackendError};
use rand::Rng;

use rand_chacha::ChaCha8Rng;

use crate::config::{EPath, EStepSettings, Search};
use crate::estep::{choose_step, draw_slots, propose};
use crate::model::{
    Candidates, ControllerStats, Episodes, Forward, Model, Routes, controller_stats,
    stored_then_drawn, usage_counts,
};
use crate::models::lm_config::{LmModelConfig, Recurrent};
use crate::models::topk::{TopKCache, TopKGate};

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

/// A modular GRU cell whose modules are chosen and weighted by a noisy top-k gate on
/// `[x_t; h_{t-1}]` (Shazeer et al. 2017).
#[derive(Clone, Debug)]
pub struct TopKGruCell {
    /// The gate.
    pub gate: TopKGate,
    /// The modules, each output scaled by its gate value.
    pub modules: ModularGruModules,
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
    /// With `model.shared_base`, the reparametrisations of the modules' input and hidden
    /// sides (empty otherwise).
    pub shared: Vec<SharedBase>,
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
    modules: ModularGruModulesCache<B>,
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
    /// The window's input words, time-major `[T * n]`.
    ids: Vec<u32>,
    targets: Vec<u32>,
    embed_mask: Option<B::Tensor>,
    /// The modular cell's window-wide work (fixed routes).
    window_input: Option<WindowRouted<B>>,
    steps: Vec<StepCache<B>>,
    out_mask: Option<B::Tensor>,
    output: <Linear as Module<B>>::Cache,
    log_probs: B::Tensor,
    batch: usize,
}

/// With fixed routes, the modular cell's input side runs once over the window, and both
/// sides' weight gradients are accumulated once over it: the window's routing, the input
/// side's cache and the states `h_{t-1}` the hidden side read, stacked `[T * n, hidden]`.
#[derive(Debug)]
struct WindowRouted<B: Backend> {
    routing: Routing,
    input: ModularCache<B>,
    h_prev: B::Tensor,
}

/// A step's gradient towards its input `x_t`.
enum InputGrad<B: Backend> {
    /// `dL/dx_t` itself.
    Dx(B::Tensor),
    /// The gradients at the outputs of the modules' input and hidden sides (`[n, 3h]` each),
    /// whose window-wide backward runs after the loop, plus the controller's share of
    /// `dL/dx_t`.
    Gx {
        d_gx: B::Tensor,
        d_gh: B::Tensor,
        dx: Option<B::Tensor>,
    },
}

/// Rows `[t n, (t + 1) n)` of a time-major window tensor.
fn step_rows(t: usize, n: usize) -> Vec<u32> {
    (t * n..(t + 1) * n).map(|r| r as u32).collect()
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
                let modules =
                    ModularGruModules::new(b, params, "gru", d, config.hidden, modules, rng);
                let cell = TopKGruCell {
                    gate,
                    modules,
                    importance_weight,
                };
                (Cell::TopK(cell), config.hidden)
            }
            Recurrent::Dense { hidden } => (
                Cell::Dense(GruCell::new(
                    b,
                    params,
                    "gru",
                    d,
                    hidden,
                    Init::ScaledGlorot {
                        scale: config.dense_init_scale,
                    },
                    rng,
                )),
                hidden,
            ),
        };
        let modules = match &cell {
            Cell::Modular(c) => Some(&c.modules),
            Cell::TopK(c) => Some(&c.modules),
            Cell::Dense(_) => None,
        };
        if let Some(m) = modules.filter(|_| config.module_init_scale != 1.0) {
            // Scaled after drawing, so the random stream (and every other initial value) is
            // the same whatever the factor.
            for id in [m.input.weight, m.recurrent.weight] {
                b.scale(params.get_mut(id), config.module_init_scale);
            }
        }
        // The base is drawn after the modules, like a dense GRU's weights (Glorot over one
        // gate's fans), so that without it the random stream is unchanged.
        let shared = match modules.filter(|_| config.shared_base) {
            Some(m) => [(&m.input, "gru.input"), (&m.recurrent, "gru.recurrent")]
                .map(|(layer, name)| {
                    let base = Init::Glorot.sample(
                        rng,
                        layer.d_in,
                        layer.d_out / 3,
                        layer.d_in * layer.d_out,
                    );
                    SharedBase::new(b, params, name, layer, &base)
                })
                .to_vec(),
            None => Vec::new(),
        };
        let output = Linear::new(b, params, "softmax", hidden, vocab, Init::Glorot, rng);
        LanguageModel {
            embedding,
            cell,
            output,
            dropout: Dropout::new(config.dropout),
            hidden,
            shared,
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
                    c.d_in() as u64,
                    c.controller.modules as u64,
                    c.controller.k as u64,
                );
                // K modules of (d + h) x 3h, plus the controller's (d + h) x KM logits.
                k * (d + h) * 3 * h + (d + h) * k * m
            }
            Cell::TopK(c) => {
                let (d, m, k) = (
                    c.modules.d_in as u64,
                    c.gate.modules as u64,
                    c.gate.k as u64,
                );
                // K modules, plus the gate's clean and noise projections (d + h) x M.
                k * (d + h) * 3 * h + 2 * (d + h) * m
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
        gx: Option<&B::Tensor>,
        h_prev: &B::Tensor,
        routes: &mut Routes<'_, '_, B>,
        stats: Option<&mut Vec<f32>>,
        ctx: &mut Ctx,
    ) -> Result<StepResult<B>, BackendError> {
        match &self.cell {
            Cell::Modular(cell) => {
                let prepared = cell.prepare(b, params, x, h_prev);
                if let Some(acc) = stats {
                    acc.extend(b.download(&prepared.controller.log_probs)?);
                }
                let (selection, target) = match routes {
                    Routes::Stored(selections) => (selections[t].clone(), None),
                    Routes::Chosen(route) => (route(t, &prepared.controller)?, None),
                    Routes::Guided { targets, route } => {
                        (route(t, &prepared.controller)?, Some(targets[t].clone()))
                    }
                };
                let (h, log_p, cache) = match (gx, target) {
                    (Some(gx), _) => {
                        cell.finish_with_input(b, params, prepared, gx, h_prev, selection.clone())
                    }
                    (None, Some(target)) => {
                        cell.finish_guided(b, params, prepared, h_prev, selection.clone(), target)
                    }
                    (None, None) => cell.finish(b, params, prepared, h_prev, selection.clone()),
                };
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
                let (h, modules) =
                    cell.modules
                        .forward(b, params, x, h_prev, &routing, Some(&gate_values));
                let (loss, d_importance) = cell.gate.importance_loss(&gate, cell.importance_weight);
                let cache = TopKStepCache {
                    gate,
                    routing,
                    modules,
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

    /// Backward of one step: accumulates parameter gradients, returns the gradient towards
    /// `x_t` and `dh_prev`.
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
        window_input: bool,
    ) -> Result<(InputGrad<B>, B::Tensor), BackendError> {
        match (&self.cell, cache) {
            (Cell::Modular(cell), StepCache::Modular(cache)) => {
                let d_logp = b.upload([d_logp.len(), 1], d_logp);
                if window_input {
                    let g = cell.step_backward_to_input(b, params, *cache, dh, &d_logp, grads);
                    let (d_gx, d_gh, dx) = (g.d_gx, g.d_gh, g.dx_controller);
                    Ok((InputGrad::Gx { d_gx, d_gh, dx }, g.dh_prev))
                } else {
                    let (dx, dh_prev) = cell.step_backward(b, params, *cache, dh, &d_logp, grads);
                    Ok((InputGrad::Dx(dx), dh_prev))
                }
            }
            (Cell::TopK(cell), StepCache::TopK(cache)) => {
                let cache = *cache;
                let (mut dx, mut dh_prev, d_gates) =
                    cell.modules
                        .backward(b, params, &cache.routing, cache.modules, dh, grads);
                let mut d_gates = b.download(&d_gates.expect("the top-k modules are gated"))?;
                for (g, d) in d_gates.iter_mut().zip(&cache.d_importance) {
                    *g += importance_scale * d;
                }
                let dxh_gate = cell.gate.backward(b, params, cache.gate, &d_gates, grads)?;
                let d_in = cell.modules.d_in;
                b.copy_cols(&dxh_gate, 0, &mut dx, 0, d_in, true);
                b.copy_cols(&dxh_gate, d_in, &mut dh_prev, 0, self.hidden, true);
                Ok((InputGrad::Dx(dx), dh_prev))
            }
            (Cell::Dense(cell), StepCache::Dense(cache)) => {
                let (dx, dh_prev) = cell.step_backward(b, params, cache, dh, grads);
                Ok((InputGrad::Dx(dx), dh_prev))
            }
            _ => unreachable!("a step cache always comes from the model's own cell"),
        }
    }

    /// Forward pass over a window: `ids[t]` are the `n` input words of step `t`, `targets`
    /// the next words (time-major, `T * n`), `h0` the carried state. `routes` gives or picks
    /// each step's selection (unused by top-k and dense cells). Dropout is active when
    /// `ctx.train`. With `stats`, the controller's entropies are summarised.
    ///
    /// # Errors
    /// Device failures, and whatever the router returns.
    ///
    /// # Panics
    /// If `targets.len() != T * n`, fixed routes do not hold one selection per step, or a
    /// shape disagrees with the model.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_window<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        mut routes: Routes<'_, '_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<WindowOutput<B>, BackendError> {
        let n = b.shape(h0)[0];
        let steps = ids.len();
        assert_eq!(targets.len(), steps * n, "one target per input word");
        let words = ids.concat();
        assert_eq!(
            words.len(),
            steps * n,
            "every step needs one word per stream"
        );
        // The embedding, its dropout, the output dropout and the softmax do not depend on the
        // recurrence: each runs once over the window's `T * n` rows.
        let e = self.embedding.forward(b, params, &words);
        let (x_all, embed_mask) = self.dropout.forward(b, params, &e, ctx);
        let mut window_input = match (&self.cell, &routes) {
            (Cell::Modular(cell), Routes::Stored(selections)) => {
                assert_eq!(
                    selections.len(),
                    steps,
                    "fixed routes need one selection per step"
                );
                let all = Selection::concat(&selections.iter().collect::<Vec<_>>());
                let routing = Routing::new(&all, cell.modules.modules());
                let (gx, cache) = cell
                    .modules
                    .input
                    .forward(b, params, &x_all, &routing, None);
                let h_prev = b.zeros([steps * n, self.hidden]);
                Some((gx, routing, cache, h_prev))
            }
            _ => None,
        };
        let mut stat_acc = stats.then(Vec::new);
        let mut h = b.duplicate(h0);
        let mut stacked = b.zeros([steps * n, self.hidden]);
        let (mut step_caches, mut selections, mut log_p) = (Vec::new(), Vec::new(), Vec::new());
        let mut importance = 0.0;
        for t in 0..steps {
            let rows = step_rows(t, n);
            let x = b.gather_rows(&x_all, &rows);
            let gx = window_input.as_mut().map(|(gx, _, _, h_prev)| {
                b.scatter_add_rows(h_prev, &h, &rows);
                b.gather_rows(gx, &rows)
            });
            let r = self.step(
                b,
                params,
                t,
                &x,
                gx.as_ref(),
                &h,
                &mut routes,
                stat_acc.as_mut(),
                ctx,
            )?;
            importance += r.importance;
            step_caches.push(r.cache);
            log_p.extend(r.log_p.unwrap_or_default());
            selections.extend(r.selection);
            b.scatter_add_rows(&mut stacked, &r.h, &rows);
            h = r.h;
        }
        let (dropped, out_mask) = self.dropout.forward(b, params, &stacked, ctx);
        let (logits, output) = self.output.forward(b, params, &dropped, ctx);
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
                ids: words,
                targets: targets.to_vec(),
                embed_mask,
                window_input: window_input.map(|(_, routing, input, h_prev)| WindowRouted {
                    routing,
                    input,
                    h_prev,
                }),
                steps: step_caches,
                out_mask,
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
        let d_dropped = self
            .output
            .backward(b, params, cache.output, &d_logits, grads);
        let d_stacked = self
            .dropout
            .backward(b, params, cache.out_mask, &d_dropped, grads);
        let window_input = cache.window_input.is_some();
        let d_in = self.embedding.dim;
        let mut dx_all = b.zeros([steps * n, d_in]);
        let mut d_g_all = window_input.then(|| {
            let zeros = || b.zeros([steps * n, 3 * self.hidden]);
            (zeros(), zeros())
        });
        let zeros = vec![0.0; n];
        let mut carry: Option<B::Tensor> = None;
        for (t, step) in cache.steps.into_iter().enumerate().rev() {
            let rows = step_rows(t, n);
            let mut dh = b.gather_rows(&d_stacked, &rows);
            if let Some(c) = &carry {
                b.axpy(1.0, c, &mut dh);
            }
            let dl = if d_logp.is_empty() {
                &zeros[..]
            } else {
                &d_logp[t * n..(t + 1) * n]
            };
            let scale = 1.0 / steps as f32;
            let (dx, dh_prev) =
                self.step_backward(b, params, step, &dh, dl, scale, grads, window_input)?;
            match dx {
                InputGrad::Dx(dx) => b.scatter_add_rows(&mut dx_all, &dx, &rows),
                InputGrad::Gx { d_gx, d_gh, dx } => {
                    let (d_gx_all, d_gh_all) =
                        d_g_all.as_mut().expect("window-wide module gradients");
                    b.scatter_add_rows(d_gx_all, &d_gx, &rows);
                    b.scatter_add_rows(d_gh_all, &d_gh, &rows);
                    if let Some(dx) = dx {
                        b.scatter_add_rows(&mut dx_all, &dx, &rows);
                    }
                }
            }
            carry = Some(dh_prev);
        }
        if let (Some(w), Some((d_gx_all, d_gh_all)), Cell::Modular(cell)) =
            (cache.window_input, d_g_all, &self.cell)
        {
            let modules = &cell.modules;
            let (dx, _) = modules
                .input
                .backward(b, params, &w.routing, w.input, &d_gx_all, grads);
            b.axpy(1.0, &dx, &mut dx_all);
            modules
                .recurrent
                .weight_grads(b, &w.routing, &w.h_prev, &d_gh_all, grads);
        }
        let de = self
            .dropout
            .backward(b, params, cache.embed_mask, &dx_all, grads);
        self.embedding.backward(b, &cache.ids, &de, grads);
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
    pub fn score_paths<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        stored: &[Selection],
        estep: &EStepSettings,
        rng: &mut impl Rng,
        ctx: &mut Ctx,
    ) -> Result<(Vec<f64>, Vec<Selection>), BackendError> {
        let Cell::Modular(cell) = &self.cell else {
            panic!("score_paths needs a controller-routed modular cell");
        };
        let samples = estep.samples;
        let n = b.shape(h0)[0];
        let rep: Vec<u32> = (0..samples).flat_map(|_| 0..n as u32).collect();
        let mut h = b.gather_rows(h0, &rep);
        let rows = samples * n;
        let mut scores = vec![0.0f64; rows];
        let mut chosen = Vec::with_capacity(ids.len());
        // The softmax over the vocabulary is most of an E-step's work and does not feed the
        // recurrence, so it runs on the states of several steps at once: a taller product
        // than one step's rows, about `SOFTMAX_ROWS` rows (and their logits) at a time.
        const SOFTMAX_ROWS: usize = 2048;
        let per_chunk = (SOFTMAX_ROWS / rows).max(1);
        let mut chunk = Chunk {
            states: b.zeros([per_chunk * rows, self.hidden]),
            targets: Vec::with_capacity(per_chunk * rows),
            log_ps: Vec::with_capacity(per_chunk),
        };
        for (t, step_ids) in ids.iter().enumerate() {
            let words: Vec<u32> = rep.iter().map(|&i| step_ids[i as usize]).collect();
            let x = self.scoring_input(b, params, &words, estep, ctx);
            let prepared = cell.prepare(b, params, &x, &h);
            let drawn = propose(b, &prepared.controller, estep.uniform, rng)?;
            assert_eq!(
                stored[t].rows(),
                n,
                "stored selection of step {t} has the wrong rows"
            );
            let selection = stored_then_drawn(&stored[t], &drawn);
            let (h_next, log_p, _) = cell.finish(b, params, prepared, &h, selection.clone());
            let at = chunk.log_ps.len() * rows;
            let slots: Vec<u32> = (at..at + rows).map(|r| r as u32).collect();
            b.scatter_add_rows(&mut chunk.states, &h_next, &slots);
            chunk
                .targets
                .extend(rep.iter().map(|&i| targets[t * n + i as usize]));
            chunk.log_ps.push(b.download(&log_p)?);
            if chunk.log_ps.len() == per_chunk || t + 1 == ids.len() {
                self.score_chunk(b, params, &mut chunk, &mut scores, estep, ctx)?;
            }
            chosen.push(selection);
            h = h_next;
        }
        Ok((scores, chosen))
    }

    /// Adds `-log p(w_{t+1} | .) + log p(a_t | .)` of each step held in `chunk` to each
    /// candidate row's score, step by step in order, and empties the chunk.
    fn score_chunk<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        chunk: &mut Chunk<B>,
        scores: &mut [f64],
        estep: &EStepSettings,
        ctx: &mut Ctx,
    ) -> Result<(), BackendError> {
        let rows = scores.len();
        let used = chunk.log_ps.len() * rows;
        let partial;
        let states = if used == b.shape(&chunk.states)[0] {
            &chunk.states
        } else {
            let live: Vec<u32> = (0..used as u32).collect();
            partial = b.gather_rows(&chunk.states, &live);
            &partial
        };
        let nll = self.next_word_nll(b, params, states, &chunk.targets, estep.dropout, ctx)?;
        for (step_nll, log_p) in nll.chunks(rows).zip(&chunk.log_ps) {
            for (s, (l, p)) in scores.iter_mut().zip(step_nll.iter().zip(log_p)) {
                *s += -(*l as f64) + *p as f64;
            }
        }
        b.fill(&mut chunk.states, 0.0);
        chunk.targets.clear();
        chunk.log_ps.clear();
        Ok(())
    }
}

impl LanguageModel {
    /// The embedded `words` an E-step scores with: with `estep.dropout`, through the training
    /// dropout (drawn from `ctx`), as the M-step sees them; otherwise as they are.
    fn scoring_input<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        words: &[u32],
        estep: &EStepSettings,
        ctx: &mut Ctx,
    ) -> B::Tensor {
        let x = self.embedding.forward(b, params, words);
        if estep.dropout {
            self.dropout.forward(b, params, &x, &mut train_ctx(ctx)).0
        } else {
            x
        }
    }

    /// `-log p(target | state)` of each row of `states` under the softmax, with the output
    /// dropout when `dropout` (drawn from `ctx`).
    fn next_word_nll<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        states: &B::Tensor,
        targets: &[u32],
        dropout: bool,
        ctx: &mut Ctx,
    ) -> Result<Vec<f32>, BackendError> {
        let dropped;
        let states = if dropout {
            dropped = self
                .dropout
                .forward(b, params, states, &mut train_ctx(ctx))
                .0;
            &dropped
        } else {
            states
        };
        let (logits, _) = self.output.forward(b, params, states, &mut Ctx::eval());
        let (nll, _) = softmax_cross_entropy(b, logits, targets);
        b.download(&nll)
    }

    /// EM's per-step search through a window (`Search::Step`). Walking the window along the
    /// best prefix found so far, each step scores every stream's candidates for `a_t` (the
    /// `M` modules when `K = 1` and `M <= samples`, else the stored choice and
    /// `samples - 1` proposals) by `log p(w_{t+1} | h_t(a_t)) + prior_weight * log p(a_t | .)`
    /// (plus, with a horizon `L > 1`, the next `L - 1` words' log-likelihood under greedy
    /// continuation), keeps one per stream ([`choose_step`]) and goes on from its state. All
    /// candidates of all streams, and the stored path's own rows, run through one grouped
    /// product and one softmax per step.
    ///
    /// Returns two candidates per stream, as the E-step compares them: candidate 0 the stored
    /// path, candidate 1 the path found, each scored by its window sum
    /// `sum_t log p(w_{t+1} | ., a) + log p(a_t | .)` (the bound, whatever the search's
    /// weights), so that the E-step keeps the better and the bound never decreases.
    ///
    /// Along the greedy path ([`EPath::Greedy`]) the walk goes on from each stream's greedy
    /// candidate instead of its best (with proposals, candidate 0 is the greedy choice in
    /// place of the stored one), so what is found is one target per step, not a path; the
    /// stored targets are scored from the same greedy prefix, and the two window sums
    /// compare the two sets of targets.
    ///
    /// # Errors
    /// Device failures.
    ///
    /// # Panics
    /// If the cell is not [`Cell::Modular`] or a stored selection does not have `n` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn search_steps<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        stored: &[Selection],
        estep: &EStepSettings,
        rng: &mut impl Rng,
        ctx: &mut Ctx,
    ) -> Result<Candidates, BackendError> {
        let Cell::Modular(cell) = &self.cell else {
            panic!("search_steps needs a controller-routed modular cell");
        };
        let (m, k) = (cell.controller.modules, cell.controller.k);
        let n = b.shape(h0)[0];
        let enumerate = k == 1 && m <= estep.samples;
        let c = if enumerate { m } else { estep.samples };
        // Rows `j * n + i` are candidate `j` of stream `i`; rows `c * n + i` the stored path.
        let cand: Vec<u32> = (0..c).flat_map(|_| 0..n as u32).collect();
        let all: Vec<u32> = cand.iter().copied().chain(0..n as u32).collect();
        let stored_rows: Vec<u32> = (c * n..(c + 1) * n).map(|r| r as u32).collect();
        let (mut h, mut hs) = (b.duplicate(h0), b.duplicate(h0));
        let (mut stored_score, mut new_score) = (vec![0.0f64; n], vec![0.0f64; n]);
        let mut found = Vec::with_capacity(ids.len());
        for (t, step_ids) in ids.iter().enumerate() {
            assert_eq!(
                stored[t].rows(),
                n,
                "stored selection of step {t} has the wrong rows"
            );
            let x = self.scoring_input(b, params, step_ids, estep, ctx);
            let x_all = b.gather_rows(&x, &all);
            // The candidates start from the best prefix's state, the stored path from its own.
            let h_all = stack_rows(b, &b.gather_rows(&h, &cand), &hs);
            let prepared = cell.prepare(b, params, &x_all, &h_all);
            // Along the greedy path, the walk goes on from each stream's greedy candidate:
            // candidate 0 when proposals are drawn, module `g` (row `g * n + i`) when all
            // modules are enumerated. Every candidate row of a stream shares its input and
            // state, so the first `n` rows' controller gives the greedy choices.
            let greedy = match estep.path {
                EPath::Greedy => {
                    let all = prepared.controller.greedy(b)?;
                    Some(Selection::new(k, all.as_slice()[..n * k].to_vec()))
                }
                EPath::Best => None,
            };
            let mut picks = if enumerate {
                (0..c as u32)
                    .flat_map(|j| std::iter::repeat_n(j, n))
                    .collect()
            } else {
                let lp = b.download(&prepared.controller.log_probs)?;
                let first = greedy.as_ref().unwrap_or(&stored[t]);
                let mut drawn = first.as_slice().to_vec();
                drawn.extend(draw_slots(
                    &lp[n * k * m..c * n * k * m],
                    m,
                    estep.uniform,
                    rng,
                ));
                drawn
            };
            picks.extend_from_slice(stored[t].as_slice());
            let selection = Selection::new(k, picks);
            let (h_next, log_p, _) = cell.finish(b, params, prepared, &h_all, selection.clone());
            let log_p = b.download(&log_p)?;
            let step_targets: Vec<u32> = all.iter().map(|&i| targets[t * n + i as usize]).collect();
            let nll = self.next_word_nll(b, params, &h_next, &step_targets, estep.dropout, ctx)?;
            let mut search: Vec<f64> = (0..c * n)
                .map(|r| -(nll[r] as f64) + estep.prior_weight as f64 * log_p[r] as f64)
                .collect();
            if estep.horizon > 1 {
                let cand_states = b.gather_rows(&h_next, &(0..(c * n) as u32).collect::<Vec<_>>());
                self.add_horizon(
                    b,
                    params,
                    ids,
                    targets,
                    t,
                    &cand,
                    cand_states,
                    estep,
                    ctx,
                    &mut search,
                )?;
            }
            let choice = choose_step(&search, n, c, selection.as_slice(), k, m, estep, rng);
            let rows: Vec<u32> = choice
                .iter()
                .enumerate()
                .map(|(i, &j)| (j * n + i) as u32)
                .collect();
            for (i, &r) in rows.iter().enumerate() {
                let r = r as usize;
                new_score[i] += -(nll[r] as f64) + log_p[r] as f64;
                let s = c * n + i;
                stored_score[i] += -(nll[s] as f64) + log_p[s] as f64;
            }
            let picked: Vec<u32> = rows
                .iter()
                .flat_map(|&r| {
                    selection.as_slice()[r as usize * k..(r as usize + 1) * k]
                        .iter()
                        .copied()
                })
                .collect();
            found.push(Selection::new(k, picked));
            match &greedy {
                Some(g) => {
                    // The stored targets are scored from the greedy state too, so that the
                    // comparison below weighs two sets of targets along the same path.
                    let follow: Vec<u32> = (0..n)
                        .map(|i| {
                            let j = if enumerate {
                                g.as_slice()[i] as usize
                            } else {
                                0
                            };
                            (j * n + i) as u32
                        })
                        .collect();
                    h = b.gather_rows(&h_next, &follow);
                    hs = b.duplicate(&h);
                }
                None => {
                    h = b.gather_rows(&h_next, &rows);
                    hs = b.gather_rows(&h_next, &stored_rows);
                }
            }
        }
        let selections = stored
            .iter()
            .zip(&found)
            .map(|(s, f)| Selection::concat(&[s, f]))
            .collect();
        stored_score.extend(new_score);
        Ok(Candidates {
            samples: 2,
            scores: stored_score,
            selections,
        })
    }

    /// Adds to each candidate row's `search` score the log-likelihood of the words after step
    /// `t`'s next one, up to `estep.horizon` words in all, continuing from the candidate's
    /// state `states` (`rows` maps each candidate row to its stream) with greedy routing.
    #[allow(clippy::too_many_arguments)]
    fn add_horizon<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        t: usize,
        rows: &[u32],
        mut states: B::Tensor,
        estep: &EStepSettings,
        ctx: &mut Ctx,
        search: &mut [f64],
    ) -> Result<(), BackendError> {
        let Cell::Modular(cell) = &self.cell else {
            unreachable!("the search runs on the modular cell");
        };
        let n = ids[0].len();
        for l in 1..estep.horizon {
            let Some(step_ids) = ids.get(t + l) else {
                break;
            };
            let words: Vec<u32> = rows.iter().map(|&i| step_ids[i as usize]).collect();
            let x = self.scoring_input(b, params, &words, estep, ctx);
            let prepared = cell.prepare(b, params, &x, &states);
            let greedy = prepared.controller.greedy(b)?;
            let (h_next, _, _) = cell.finish(b, params, prepared, &states, greedy);
            let step_targets: Vec<u32> = rows
                .iter()
                .map(|&i| targets[(t + l) * n + i as usize])
                .collect();
            let nll = self.next_word_nll(b, params, &h_next, &step_targets, estep.dropout, ctx)?;
            search
                .iter_mut()
                .zip(&nll)
                .for_each(|(s, &l)| *s -= l as f64);
            states = h_next;
        }
        Ok(())
    }
}

/// What [`LanguageModel::filtered_window`] measured on one window.
#[derive(Debug)]
pub struct FilteredWindow<B: Backend> {
    /// `-log p(w_{t+1} | w_{<=t})` per position under the filtered mixture (time-major).
    pub mixture_nll: Vec<f64>,
    /// `-log p(w_{t+1} | ., a_t)` per position along the committed posterior routes.
    pub posterior_nll: Vec<f64>,
    /// The committed route of each step.
    pub selections: Vec<Selection>,
    /// The last state, to carry into the next window.
    pub h_last: B::Tensor,
}

impl LanguageModel {
    /// The filtered-mixture and posterior evaluations of a window (no dropout).
    ///
    /// At each step, every stream's next word is predicted by the mixture over its candidate
    /// routes from the committed state: for `K = 1`, all `M` modules, weighted by the
    /// controller, `p(w_{t+1} | past) = sum_m p(m | x_t, h_{t-1}) p(w_{t+1} | h_t(m))`; for
    /// `K > 1`, `samples` selections drawn from the controller with `rng`, equally weighted
    /// (a Monte Carlo estimate of the same sum). Once the word is seen, the step's route is
    /// committed to the posterior argmax (`argmax p(a | .) p(w_{t+1} | a)`, or for drawn
    /// selections `argmax p(w_{t+1} | a)`) and later steps go on from its state. The mixture
    /// is a valid causal score at `M` (or `samples`) modules' compute per token; the
    /// posterior's `-log p(w_{t+1} | a_t)` along the committed routes chose `a_t` knowing
    /// `w_{t+1}` and is a diagnostic only.
    ///
    /// # Errors
    /// Device failures.
    ///
    /// # Panics
    /// If the cell is not [`Cell::Modular`].
    #[allow(clippy::too_many_arguments)]
    pub fn filtered_window<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        ids: &[Vec<u32>],
        targets: &[u32],
        h0: &B::Tensor,
        samples: usize,
        rng: &mut impl Rng,
    ) -> Result<FilteredWindow<B>, BackendError> {
        let Cell::Modular(cell) = &self.cell else {
            panic!("filtered_window needs a controller-routed modular cell");
        };
        let (m, k) = (cell.controller.modules, cell.controller.k);
        let n = b.shape(h0)[0];
        let enumerate = k == 1;
        let c = if enumerate { m } else { samples };
        let cand: Vec<u32> = (0..c).flat_map(|_| 0..n as u32).collect();
        let mut h = b.duplicate(h0);
        let mut out = FilteredWindow {
            mixture_nll: Vec::with_capacity(ids.len() * n),
            posterior_nll: Vec::with_capacity(ids.len() * n),
            selections: Vec::with_capacity(ids.len()),
            h_last: b.zeros([0, self.hidden]),
        };
        let mut ctx = Ctx::eval();
        for (t, step_ids) in ids.iter().enumerate() {
            let x = self.embedding.forward(b, params, step_ids);
            let (x_c, h_c) = (b.gather_rows(&x, &cand), b.gather_rows(&h, &cand));
            let prepared = cell.prepare(b, params, &x_c, &h_c);
            let picks: Vec<u32> = if enumerate {
                (0..c as u32)
                    .flat_map(|j| std::iter::repeat_n(j, n))
                    .collect()
            } else {
                let lp = b.download(&prepared.controller.log_probs)?;
                draw_slots(&lp, m, 0.0, rng)
            };
            let selection = Selection::new(k, picks);
            let (h_next, log_p, _) = cell.finish(b, params, prepared, &h_c, selection.clone());
            let log_p = b.download(&log_p)?;
            let step_targets: Vec<u32> =
                cand.iter().map(|&i| targets[t * n + i as usize]).collect();
            let nll = self.next_word_nll(b, params, &h_next, &step_targets, false, &mut ctx)?;
            // Per candidate row, the log-weight of its route in the mixture and the joint
            // `log p(a) + log p(w | a)` its posterior is proportional to.
            let weight = |r: usize| {
                if enumerate {
                    log_p[r] as f64
                } else {
                    -(c as f64).ln()
                }
            };
            let mut rows = Vec::with_capacity(n);
            for i in 0..n {
                let joint: Vec<f64> = (0..c)
                    .map(|j| weight(j * n + i) - nll[j * n + i] as f64)
                    .collect();
                let top = joint.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = joint.iter().map(|&v| (v - top).exp()).sum();
                out.mixture_nll.push(-(top + sum.ln()));
                let best = (1..c).fold(0, |b, j| if joint[j] > joint[b] { j } else { b });
                out.posterior_nll.push(nll[best * n + i] as f64);
                rows.push((best * n + i) as u32);
            }
            let picked: Vec<u32> = rows
                .iter()
                .flat_map(|&r| {
                    selection.as_slice()[r as usize * k..(r as usize + 1) * k]
                        .iter()
                        .copied()
                })
                .collect();
            out.selections.push(Selection::new(k, picked));
            h = b.gather_rows(&h_next, &rows);
        }
        out.h_last = h;
        Ok(out)
    }
}

/// `top` above `bottom`, as one tensor (the column counts agree).
fn stack_rows<B: Backend>(b: &B, top: &B::Tensor, bottom: &B::Tensor) -> B::Tensor {
    let ([rt, cols], rb) = (b.shape(top), b.shape(bottom)[0]);
    let mut out = b.zeros([rt + rb, cols]);
    b.scatter_add_rows(&mut out, top, &(0..rt as u32).collect::<Vec<_>>());
    b.scatter_add_rows(
        &mut out,
        bottom,
        &(rt..rt + rb).map(|r| r as u32).collect::<Vec<_>>(),
    );
    out
}

/// A training context drawing from `ctx`'s stream, for dropout in E-step scoring (which runs
/// under an evaluation context).
fn train_ctx(ctx: &mut Ctx) -> Ctx {
    Ctx::train(ctx.rng.random())
}

/// The steps of an E-step waiting for their softmax (see [`LanguageModel::score_paths`]):
/// their states stacked, their targets and their `log p(a_t | .)` per candidate row.
struct Chunk<B: Backend> {
    states: B::Tensor,
    targets: Vec<u32>,
    log_ps: Vec<Vec<f32>>,
}

/// What a [`LanguageModel`]'s forward pass reads: one truncated-BPTT window of `n` streams.
#[derive(Debug)]
pub struct LmWindow<B: Backend> {
    /// `ids[t]` are the `n` input words of step `t`.
    pub ids: Vec<Vec<u32>>,
    /// The next words, time-major (`T * n`).
    pub targets: Vec<u32>,
    /// The state carried in from the previous window, `[n, hidden]`.
    pub h0: B::Tensor,
}

impl<B: Backend> Model<B> for LanguageModel {
    type Input = LmWindow<B>;
    type Cache = WindowCache<B>;

    fn table_shapes(&self) -> Vec<(usize, usize)> {
        match &self.cell {
            Cell::Modular(c) => vec![(c.controller.modules, c.controller.k)],
            Cell::TopK(_) | Cell::Dense(_) => Vec::new(),
        }
    }

    fn forward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &LmWindow<B>,
        routes: Routes<'_, '_, B>,
        stats: bool,
        ctx: &mut Ctx,
    ) -> Result<Forward<B, WindowCache<B>>, BackendError> {
        let n = b.shape(&input.h0)[0];
        let out = self.forward_window(
            b,
            params,
            &input.ids,
            &input.targets,
            &input.h0,
            routes,
            stats,
            ctx,
        )?;
        let usage = match self.modular_shape() {
            Some((m, _)) => vec![usage_counts(&out.selections, m)],
            None => Vec::new(),
        };
        Ok(Forward {
            nll: out.nll,
            log_p: out.log_p,
            selections: out.selections,
            usage,
            stats: out.stats,
            importance: out.importance,
            episodes: Episodes::Streams(n),
            carry: Some(out.h_last),
            cache: out.cache,
        })
    }

    fn backward(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: WindowCache<B>,
        d_nll: f32,
        d_logp: &[f32],
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        self.backward_window(b, params, cache, d_nll, d_logp, grads)
    }

    fn score_candidates(
        &self,
        b: &B,
        params: &ParamStore<B>,
        input: &LmWindow<B>,
        stored: &[Selection],
        _keys: &[u32],
        estep: &EStepSettings,
        rng: &mut ChaCha8Rng,
        ctx: &mut Ctx,
    ) -> Result<Candidates, BackendError> {
        // A window's candidates draw from the batch's stream: language models are not trained
        // data-parallel, so nothing asks for per-example streams here.
        let (ids, targets, h0) = (&input.ids, &input.targets, &input.h0);
        if estep.search == Search::Step {
            return self.search_steps(b, params, ids, targets, h0, stored, estep, rng, ctx);
        }
        let (scores, selections) =
            self.score_paths(b, params, ids, targets, h0, stored, estep, rng, ctx)?;
        Ok(Candidates {
            samples: estep.samples,
            scores,
            selections,
        })
    }

    fn fold_grads(&self, b: &B, grads: &mut Grads<B>) {
        for shared in &self.shared {
            shared.fold_grads(b, grads);
        }
    }

    fn refresh(&self, b: &B, params: &mut ParamStore<B>) {
        for shared in &self.shared {
            shared.refresh(b, params);
        }
    }
}
