//! The controller: a linear map from a layer's input to K categorical distributions over the
//! M modules, one per slot.

use modula_nn::{Ctx, Grads, Init, Linear, Module, ParamStore};
use modula_tensor::{Backend, BackendError, ReduceOp};
use rand::Rng;

use crate::selection::Selection;

/// Controller of a modular layer: `p(a | x) = prod_k softmax(W_k x + c_k)[a_k]`.
///
/// One linear layer produces `K * M` logits per row, read as `K` independent distributions
/// over `M` modules. Slots are sampled with replacement.
#[derive(Clone, Debug)]
pub struct Controller {
    /// The logit map `[d_in] -> [K * M]`.
    pub linear: Linear,
    /// Number of modules `M`.
    pub modules: usize,
    /// Slots `K`.
    pub k: usize,
}

/// The controller's output for a batch: per-slot log-probabilities.
#[derive(Debug)]
pub struct ControllerOutput<B: Backend> {
    /// `log softmax` per (row, slot): shape `[n * K, M]`, row `i * K + k` is slot `k` of row `i`.
    pub log_probs: B::Tensor,
    /// Number of modules `M`.
    pub modules: usize,
    /// Slots per row `K`.
    pub k: usize,
    /// The controller's input, kept for backward.
    cache: B::Tensor,
}

impl<B: Backend> ControllerOutput<B> {
    /// Draws one selection per row (each slot independently, with replacement), using `rng`.
    ///
    /// # Errors
    /// If the device fails while reading the probabilities.
    pub fn sample(&self, b: &B, rng: &mut impl Rng) -> Result<Selection, BackendError> {
        let lp = b.download(&self.log_probs)?;
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

    /// The most probable module of each slot (ties go to the lower index).
    ///
    /// # Errors
    /// If the device fails while reading the probabilities.
    pub fn greedy(&self, b: &B) -> Result<Selection, BackendError> {
        let lp = b.download(&self.log_probs)?;
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
        Controller { linear, modules, k }
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
        let logits = b.reshape(logits, [n * self.k, self.modules]);
        ControllerOutput {
            log_probs: b.log_softmax_rows(&logits),
            modules: self.modules,
            k: self.k,
            cache,
        }
    }

    /// `log p(a | x)` per row, `[n, 1]`: the sum over slots of the chosen modules'
    /// log-probabilities (a module chosen in two slots counts twice).
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
        let picked = b.pick_cols(&out.log_probs, selection.as_slice());
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
        let per_slot = b.gather_rows(d_logp, &slot_rows);
        let mut d_lp = b.zeros([n * self.k, self.modules]);
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
        let d_logits = b.reshape(d_logits, [n, self.k * self.modules]);
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
