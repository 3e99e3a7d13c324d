//! The modular GRU cell: a GRU whose gate pre-activations come from a modular linear layer
//! on `[x_t; h_{t-1}]`, with its controller on the same input and one selection per step.

use modula_nn::{Grads, GruGatesCache, ParamStore, gru_gates_backward, gru_gates_forward};
use modula_tensor::Backend;
use rand::Rng;

use crate::controller::{Controller, ControllerOutput};
use crate::linear::{ModularCache, ModularLinear};
use crate::selection::{Routing, Selection};

/// A GRU cell with modular weights. With `xh = [x_t; h_{t-1}]`, a [`ModularLinear`]
/// `(d_in + h) -> 4h` produces the gate pre-activations `[a_r, a_z, a_nx, a_nh]` that
/// [`modula_nn::gru_gates_forward`] turns into `h_t`; the [`Controller`] reads the same `xh`.
///
/// A step is split in two so that the caller chooses the selection in between (sampled,
/// greedy, or a stored EM assignment): [`ModularGruCell::prepare`] concatenates and runs the
/// controller, [`ModularGruCell::finish`] runs the routed modules and the gates.
#[derive(Clone, Debug)]
pub struct ModularGruCell {
    /// Controller on `[x_t; h_{t-1}]`.
    pub controller: Controller,
    /// Modules producing the `4h` gate pre-activations.
    pub layer: ModularLinear,
    /// Input width.
    pub d_in: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Whether the controller's loss sends gradient into its input `[x_t; h_{t-1}]` (the
    /// specification's choice, and the default) or only into the controller's own weights.
    pub controller_input_grad: bool,
}

/// A step after [`ModularGruCell::prepare`]: the concatenated input and the controller's
/// distributions, from which the caller picks a selection.
#[derive(Debug)]
pub struct PreparedStep<B: Backend> {
    xh: B::Tensor,
    /// The controller's per-slot distributions for this step.
    pub controller: ControllerOutput<B>,
}

/// The result of [`ModularGruCell::forward_seq`].
#[derive(Debug)]
pub struct ModularGruSeq<B: Backend> {
    /// The states `h_1..h_T`, each `[n, hidden]`.
    pub hs: Vec<B::Tensor>,
    /// `log p(a_t | x_t, h_{t-1})` per step, each `[n, 1]`.
    pub log_ps: Vec<B::Tensor>,
    /// One cache per step, for [`ModularGruCell::backward_seq`].
    pub caches: Vec<ModularGruCache<B>>,
}

/// What [`ModularGruCell::step_backward`] needs from one step.
#[derive(Debug)]
pub struct ModularGruCache<B: Backend> {
    controller: ControllerOutput<B>,
    selection: Selection,
    routing: Routing,
    layer: ModularCache<B>,
    gates: GruGatesCache<B>,
}

impl ModularGruCell {
    /// Registers `{name}.ctrl.*` and `{name}.modules.*`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        hidden: usize,
        modules: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let controller = Controller::new(
            b,
            params,
            &format!("{name}.ctrl"),
            d_in + hidden,
            modules,
            k,
            rng,
        );
        let layer = ModularLinear::new(
            b,
            params,
            &format!("{name}.modules"),
            modules,
            d_in + hidden,
            4 * hidden,
            rng,
        );
        ModularGruCell {
            controller,
            layer,
            d_in,
            hidden,
            controller_input_grad: true,
        }
    }

    /// Concatenates `[x; h_prev]` and runs the controller on it.
    ///
    /// # Panics
    /// If `x` is not `[n, d_in]` or `h_prev` not `[n, hidden]`.
    #[track_caller]
    pub fn prepare<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        h_prev: &B::Tensor,
    ) -> PreparedStep<B> {
        let n = b.shape(x)[0];
        assert_eq!(
            b.shape(x),
            [n, self.d_in],
            "modular GRU input must be [n, d_in]"
        );
        assert_eq!(
            b.shape(h_prev),
            [n, self.hidden],
            "modular GRU state must be [n, hidden]"
        );
        let mut xh = b.zeros([n, self.d_in + self.hidden]);
        b.copy_cols(x, 0, &mut xh, 0, self.d_in, false);
        b.copy_cols(h_prev, 0, &mut xh, self.d_in, self.hidden, false);
        let controller = self.controller.forward(b, params, &xh);
        PreparedStep { xh, controller }
    }

    /// Runs the selected modules and the gates: returns `h_t [n, hidden]`,
    /// `log p(a_t | x_t, h_{t-1}) [n, 1]` and the step cache.
    #[track_caller]
    pub fn finish<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        step: PreparedStep<B>,
        h_prev: &B::Tensor,
        selection: Selection,
    ) -> (B::Tensor, B::Tensor, ModularGruCache<B>) {
        let log_p = self.controller.log_prob(b, &step.controller, &selection);
        let routing = Routing::new(&selection, self.layer.modules);
        let (pre, layer) = self.layer.forward(b, params, &step.xh, &routing, None);
        let (h, gates) = gru_gates_forward(b, &pre, h_prev);
        let cache = ModularGruCache {
            controller: step.controller,
            selection,
            routing,
            layer,
            gates,
        };
        (h, log_p, cache)
    }

    /// Backward of one step given `dh = dL/dh_t` and `d_logp = dL/d log p(a_t | .)`
    /// (`[n, 1]`); accumulates parameter gradients and returns `(dx_t, dh_{t-1})`. The
    /// controller's gradient flows into its input, as the specification asks (no
    /// stop-gradient), unless `controller_input_grad` is off.
    #[track_caller]
    pub fn step_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: ModularGruCache<B>,
        dh: &B::Tensor,
        d_logp: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, B::Tensor) {
        let (d_pre, dh_direct) = gru_gates_backward(b, &cache.gates, dh);
        let (mut dxh, _) =
            self.layer
                .backward(b, params, &cache.routing, cache.layer, &d_pre, grads);
        let dxh_ctrl =
            self.controller
                .backward(b, params, cache.controller, &cache.selection, d_logp, grads);
        if self.controller_input_grad {
            b.axpy(1.0, &dxh_ctrl, &mut dxh);
        }
        let n = b.shape(dh)[0];
        let mut dx = b.zeros([n, self.d_in]);
        b.copy_cols(&dxh, 0, &mut dx, 0, self.d_in, false);
        let mut dh_prev = dh_direct;
        b.copy_cols(&dxh, self.d_in, &mut dh_prev, 0, self.hidden, true);
        (dx, dh_prev)
    }

    /// Unrolls the cell over `xs` (`T` tensors `[n, d_in]`) from `h0`, asking `choose(t,
    /// controller_output)` for each step's selection (ancestral: step `t`'s controller sees
    /// the state produced by the earlier steps' choices). Returns the states `h_1..h_T`, the
    /// per-step `log p(a_t | .)` and the caches for [`ModularGruCell::backward_seq`].
    ///
    /// # Errors
    /// Whatever `choose` returns (for example a device failure while sampling).
    pub fn forward_seq<B: Backend, E>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        xs: &[B::Tensor],
        h0: &B::Tensor,
        mut choose: impl FnMut(usize, &ControllerOutput<B>) -> Result<Selection, E>,
    ) -> Result<ModularGruSeq<B>, E> {
        let (mut hs, mut log_ps, mut caches) = (Vec::new(), Vec::new(), Vec::new());
        for (t, x) in xs.iter().enumerate() {
            let h_prev = hs.last().unwrap_or(h0);
            let step = self.prepare(b, params, x, h_prev);
            let selection = choose(t, &step.controller)?;
            let (h, log_p, cache) = self.finish(b, params, step, h_prev, selection);
            hs.push(h);
            log_ps.push(log_p);
            caches.push(cache);
        }
        Ok(ModularGruSeq { hs, log_ps, caches })
    }

    /// Backpropagation through time over the caches of [`ModularGruCell::forward_seq`]:
    /// `dhs[t] = dL/dh_t`, `d_logps[t] = dL/d log p(a_t | .)`. Returns `(dxs, dh0)`.
    ///
    /// # Panics
    /// If `dhs` or `d_logps` do not hold one tensor per step.
    #[track_caller]
    pub fn backward_seq<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        caches: Vec<ModularGruCache<B>>,
        dhs: &[B::Tensor],
        d_logps: &[B::Tensor],
        grads: &mut Grads<B>,
    ) -> (Vec<B::Tensor>, B::Tensor) {
        assert!(
            dhs.len() == caches.len() && d_logps.len() == caches.len(),
            "one gradient per step"
        );
        let mut carry: Option<B::Tensor> = None;
        let mut dxs = Vec::with_capacity(caches.len());
        for (t, cache) in caches.into_iter().enumerate().rev() {
            let mut dh = b.duplicate(&dhs[t]);
            if let Some(c) = &carry {
                b.axpy(1.0, c, &mut dh);
            }
            let (dx, dh_prev) = self.step_backward(b, params, cache, &dh, &d_logps[t], grads);
            dxs.push(dx);
            carry = Some(dh_prev);
        }
        dxs.reverse();
        let dh0 = carry.expect("backward_seq needs at least one step");
        (dxs, dh0)
    }
}
