//! The controller: a linear map from a layer's input to K categorical distributions over the
//! M modules, one per slot, or (a distinct controller) to one distribution from which the K
//! modules are drawn without repetition.

use modula_nn::{Ctx, Grads, Init, Linear, Module, ParamStore};
use modula_tensor::{Backend, BackendError, BinaryOp, ReduceOp};
use rand::Rng;

use crate::selection::Selection;

/// Controller of a modular layer: `p(a | x) = prod_k softmax(W_k x + c_k)[a_k]`.
///
/// One linear layer produces `K * M` logits per row, read as `K` independent distributions
/// over `M` modules. Slots are sampled with replacement.
///
/// A *distinct* controller ([`Controller::distinct`]) produces `M` scores `s` per row instead
/// and draws its `K` modules without repetition (Plackett-Luce): slot `k` picks module `a_k`
/// with probability `exp(s[a_k]) / sum_{m not in a_<k} exp(s[m])`. Its most probable
/// selection is the top `K` scores, in decreasing order. Layers whose modules must not be
/// picked twice (neuron groups, [`crate::GroupedRelu`]) use it.
#[derive(Clone, Debug)]
pub struct Controller {
    /// The logit map `[d_in] -> [K * M]` (`[d_in] -> [M]` when distinct).
    pub linear: Linear,
    /// Number of modules `M`.
    pub modules: usize,
    /// Slots `K`.
    pub k: usize,
    /// Whether the `K` slots are drawn without repetition from one distribution.
    pub distinct: bool,
}

/// The controller's output for a batch: per-slot log-probabilities.
#[derive(Debug)]
pub struct ControllerOutput<B: Backend> {
    /// `log softmax` per (row, slot): shape `[n * K, M]`, row `i * K + k` is slot `k` of row
    /// `i`; for a distinct controller `[n, M]`, the first slot's distribution (the later
    /// slots renormalise it over the modules not yet drawn).
    pub log_probs: B::Tensor,
    /// Number of modules `M`.
    pub modules: usize,
    /// Slots per row `K`.
    pub k: usize,
    /// Whether the slots are drawn without repetition ([`Controller::distinct`]).
    pub distinct: bool,
    /// The controller's input, kept for backward.
    cache: B::Tensor,
}

impl<B: Backend> ControllerOutput<B> {
    /// Rows of the batch.
    pub fn rows(&self, b: &B) -> usize {
        b.shape(&self.log_probs)[0] / if self.distinct { 1 } else { self.k }
    }

    /// Draws one selection per row (each slot independently, with replacement; for a
    /// distinct controller the `K` slots without repetition), using `rng`.
    ///
    /// # Errors
    /// If the device fails while reading the probabilities.
    pub fn sample(&self, b: &B, rng: &mut impl Rng) -> Result<Selection, BackendError> {
        let lp = b.download(&self.log_probs)?;
        if self.distinct {
            let picks = lp
                .chunks(self.modules)
                .flat_map(|row| draw_distinct(row, self.k, 0.0, rng))
                .collect();
            return Ok(Selection::new(self.k, picks));
        }
        let picks = lp
            .chunks(self.modules)
            .map(|row| {
                // Inverse-CDF sampling; the last module absorbs rounding so a draw always lands.
                let u: f32 = rng.random();
                let mut acc = 0.0;
                for (m, &l) in row.iter().enumerate() {
                    acc += l.exp();
                    if u < acc {
                        return m as u32;
                    }
                }
                (self.modules - 1) as u32
            })
            .collect();
        Ok(Selection::new(self.k, picks))
    }

    /// The most probable module of each slot (ties go to the lower index); for a distinct
    /// controller the `K` highest-scoring modules, best first.
    ///
    /// # Errors
    /// If the device fails while reading the probabilities.
    pub fn greedy(&self, b: &B) -> Result<Selection, BackendError> {
        let lp = b.download(&self.log_probs)?;
        if self.distinct {
            return Ok(Selection::new(
                self.k,
                lp.chunks(self.modules)
                    .flat_map(|row| top_k(row, self.k))
                    .collect(),
            ));
        }
        Ok(Selection::new(
            self.k,
            lp.chunks(self.modules)
                .map(|row| argmax(row) as u32)
                .collect(),
        ))
    }
}

impl Controller {
    /// Registers the controller's linear map as `{name}.weight` and `{name}.bias`.
    ///
    /// # Panics
    /// If `modules == 0` or `k == 0`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        modules: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(
            modules > 0 && k > 0,
            "a controller needs M >= 1 modules and K >= 1 slots"
        );
        let linear = Linear::new(backend, params, name, d_in, k * modules, Init::Glorot, rng);
        Controller {
            linear,
            modules,
            k,
            distinct: false,
        }
    }

    /// A distinct controller: one linear map `{name}.weight` `[d_in, M]` and `{name}.bias`
    /// scoring the modules, whose `K` slots are drawn without repetition (see
    /// [`Controller`]).
    ///
    /// # Panics
    /// Unless `1 <= k <= modules`.
    #[track_caller]
    pub fn distinct<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        modules: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(
            k > 0 && k <= modules,
            "a distinct controller draws 1 to M = {modules} modules, not {k}"
        );
        let linear = Linear::new(backend, params, name, d_in, modules, Init::Glorot, rng);
        Controller {
            linear,
            modules,
            k,
            distinct: true,
        }
    }

    /// The distributions per row: `K`, or one for a distinct controller.
    pub fn heads(&self) -> usize {
        if self.distinct { 1 } else { self.k }
    }

    /// Computes the per-slot log-probabilities for input rows `x` (`[n, d_in]`).
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
    ) -> ControllerOutput<B> {
        let (logits, cache) = self.linear.forward(b, params, x, &mut Ctx::eval());
        let n = b.shape(x)[0];
        let logits = b.reshape(logits, [n * self.heads(), self.modules]);
        ControllerOutput {
            log_probs: b.log_softmax_rows(&logits),
            modules: self.modules,
            k: self.k,
            distinct: self.distinct,
            cache,
        }
    }

    /// `log p(a | x)` per row, `[n, 1]`: the sum over slots of the chosen modules'
    /// log-probabilities (a module chosen in two slots counts twice). For a distinct
    /// controller, the Plackett-Luce log-probability of the slots in order; a module repeated
    /// in a selection (only a randomly initialised EM table holds one) counts once.
    ///
    /// # Panics
    /// If the selection's shape does not match the controller output.
    #[track_caller]
    pub fn log_prob<B: Backend>(
        &self,
        b: &B,
        out: &ControllerOutput<B>,
        selection: &Selection,
    ) -> B::Tensor {
        assert_eq!(
            selection.k(),
            self.k,
            "selection has another K than the controller"
        );
        let picked = if self.distinct {
            let plan = DistinctPlan::new(selection, self.modules);
            let mut picked = b.pick_cols(&plan.slot_log_probs(b, out), selection.as_slice());
            b.scale_rows(&mut picked, &b.upload([plan.live.len(), 1], &plan.live));
            picked
        } else {
            b.pick_cols(&out.log_probs, selection.as_slice())
        };
        let per_slot = b.reshape(picked, [selection.rows(), self.k]);
        b.reduce_rows(ReduceOp::Sum, &per_slot)
    }

    /// Backward of `L` through `log p(a | x)`: given `d_logp = dL / d log p(a | x)` per row
    /// (`[n, 1]`), accumulates the controller's parameter gradients and returns `dL/dx`.
    ///
    /// With `d_logp = -1/n` this is the gradient of the mean cross-entropy that trains the
    /// controller towards `selection` (EM's M-step); with `-(R - b)/n` it is REINFORCE.
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        out: ControllerOutput<B>,
        selection: &Selection,
        d_logp: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor {
        let n = selection.rows();
        assert_eq!(b.shape(d_logp), [n, 1], "d_logp must be [n, 1]");
        let slot_rows: Vec<u32> = (0..n as u32)
            .flat_map(|i| std::iter::repeat_n(i, self.k))
            .collect();
        let mut per_slot = b.gather_rows(d_logp, &slot_rows);
        let mut d_lp = b.zeros([n * self.k, self.modules]);
        if self.distinct {
            // Through each slot's renormalised distribution back to the shared one: the
            // masks are constants, so the tiled rows' gradients add up on their row.
            let plan = DistinctPlan::new(selection, self.modules);
            b.scale_rows(&mut per_slot, &b.upload([plan.live.len(), 1], &plan.live));
            b.add_at_cols(&mut d_lp, selection.as_slice(), &per_slot);
            let d_slots = b.log_softmax_rows_backward(&plan.slot_log_probs(b, &out), &d_lp);
            let mut d_rows = b.zeros([n, self.modules]);
            b.scatter_add_rows(&mut d_rows, &d_slots, &plan.tile);
            return self.backward_log_probs(b, params, out, &d_rows, grads);
        }
        b.add_at_cols(&mut d_lp, selection.as_slice(), &per_slot);
        self.backward_log_probs(b, params, out, &d_lp, grads)
    }

    /// Backward from an arbitrary gradient on the per-slot log-probabilities
    /// (`[n * K, M]`), for objectives other than `log p(a | x)` (entropy terms, gates).
    pub fn backward_log_probs<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        out: ControllerOutput<B>,
        d_log_probs: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor {
        let d_logits = b.log_softmax_rows_backward(&out.log_probs, d_log_probs);
        let n = b.shape(&out.cache)[0];
        let d_logits = b.reshape(d_logits, [n, self.heads() * self.modules]);
        self.linear.backward(b, params, out.cache, &d_logits, grads)
    }
}

/// Index of the largest value (first on ties).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// A logit far below any real one: a drawn module's mask, whose probability underflows to 0.
const DRAWN: f32 = -1e9;

/// A distinct selection's slots as rows of their own: slot `k` of row `i` is row `i`'s
/// distribution restricted to the modules its earlier slots did not draw.
struct DistinctPlan {
    /// Row `i * K + k` reads row `i` of the controller's output.
    tile: Vec<u32>,
    /// `[n * K, M]`: 0 for a module still undrawn before the slot, [`DRAWN`] otherwise.
    mask: Vec<f32>,
    /// `[n * K]`: 1 for a slot whose module no earlier slot of its row drew, else 0 (a
    /// repeated module counts once).
    live: Vec<f32>,
    modules: usize,
}

impl DistinctPlan {
    fn new(selection: &Selection, modules: usize) -> Self {
        let (n, k) = (selection.rows(), selection.k());
        let mut mask = vec![0.0f32; n * k * modules];
        let mut live = vec![0.0f32; n * k];
        for i in 0..n {
            let row = selection.row(i);
            for s in 0..k {
                let slot = i * k + s;
                for &earlier in &row[..s] {
                    mask[slot * modules + earlier as usize] = DRAWN;
                }
                live[slot] = f32::from(u8::from(!row[..s].contains(&row[s])));
            }
        }
        DistinctPlan {
            tile: (0..n as u32)
                .flat_map(|i| std::iter::repeat_n(i, k))
                .collect(),
            mask,
            live,
            modules,
        }
    }

    /// Each slot's log-probabilities `[n * K, M]` over the modules still undrawn.
    fn slot_log_probs<B: Backend>(&self, b: &B, out: &ControllerOutput<B>) -> B::Tensor {
        let tiled = b.gather_rows(&out.log_probs, &self.tile);
        let mask = b.upload([self.tile.len(), self.modules], &self.mask);
        b.log_softmax_rows(&b.binary(BinaryOp::Add, &tiled, &mask))
    }
}

/// `k` distinct modules drawn one after another from the log-probabilities `row`, each from
/// `(1 - uniform) p + uniform / M` renormalised over the modules not yet drawn (inverse-CDF
/// sampling, one uniform draw per slot).
///
/// # Panics
/// If `k` exceeds the modules.
#[track_caller]
pub fn draw_distinct(row: &[f32], k: usize, uniform: f32, rng: &mut impl Rng) -> Vec<u32> {
    assert!(
        k <= row.len(),
        "cannot draw {k} distinct of {} modules",
        row.len()
    );
    let flat = uniform as f64 / row.len() as f64;
    let mut weight: Vec<f64> = row
        .iter()
        .map(|&l| (1.0 - uniform as f64) * (l as f64).exp() + flat)
        .collect();
    let mut picks = Vec::with_capacity(k);
    for _ in 0..k {
        let mass: f64 = weight.iter().sum();
        let u = rng.random::<f64>() * mass;
        let mut acc = 0.0;
        // The last undrawn module absorbs rounding, so a draw always lands.
        let mut pick = weight.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (m, &w) in weight.iter().enumerate() {
            acc += w;
            if w > 0.0 && u < acc {
                pick = m;
                break;
            }
        }
        // A module whose weight underflowed to zero is still undrawn: when every remaining
        // weight is zero, the lowest undrawn index is taken.
        if weight[pick] == 0.0 || picks.contains(&(pick as u32)) {
            pick = (0..row.len())
                .find(|m| !picks.contains(&(*m as u32)))
                .expect("k <= M leaves an undrawn module");
        }
        weight[pick] = 0.0;
        picks.push(pick as u32);
    }
    picks
}

/// The indices of the `k` largest values, largest first (ties to the lower index).
fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &c| row[c as usize].total_cmp(&row[a as usize]).then(a.cmp(&c)));
    idx.truncate(k);
    idx
}
