//! The modular GRU cell: a GRU whose gate and candidate pre-activations come from modules
//! chosen per time step by a controller on `[x_t; h_{t-1}]`.

use modula_nn::{
    Grads, GruGatesCache, ParamStore, gru_gates_backward, gru_gates_forward, gru_gates_from_parts,
    gru_gates_split_grad,
};
use modula_tensor::Backend;
use rand::Rng;

use crate::controller::{Controller, ControllerOutput};
use crate::linear::{ModularCache, ModularLinear};
use crate::selection::{Routing, Selection};

/// The modules of a modular GRU, in the standard GRU form: module `m` is a GRU weight set
/// `(W_x^m, b_x^m, W_h^m, b_h^m)` and a row routed to the modules `S` gets
///
/// ```text
/// gx = sum_{m in S} x W_x^m + b_x^m        gh = sum_{m in S} h W_h^m + b_h^m   ([n, 3h] each)
/// r  = sigmoid(gx_r + gh_r),  z = sigmoid(gx_z + gh_z)
/// n  = tanh(gx_n + r * gh_n),  h' = (1 - z) n + z h
/// ```
///
/// Each module is a linear map of `[x; h]` whose candidate block reads `h` only through the
/// reset gate, as in every standard GRU. (A single `(d_in + h) -> 4h` projection would also
/// let `h` into the candidate outside the reset gate; on Penn Treebank that variant learned
/// the training stream but its state ran off on held-out text.) The two halves are two
/// [`ModularLinear`] layers sharing one routing, so each is one grouped GEMM per step.
///
/// With gate weights (the noisy top-k baseline) each module's `gx` and `gh` contributions are
/// scaled by its row's gate value.
#[derive(Clone, Debug)]
pub struct ModularGruModules {
    /// Input-side modules `d_in -> 3h` (blocks r, z, n).
    pub input: ModularLinear,
    /// Hidden-side modules `h -> 3h` (blocks r, z, n).
    pub recurrent: ModularLinear,
    /// Input width.
    pub d_in: usize,
    /// Hidden width.
    pub hidden: usize,
}

/// What [`ModularGruModules::backward`] needs from [`ModularGruModules::forward`].
#[derive(Debug)]
pub struct ModularGruModulesCache<B: Backend> {
    input: ModularCache<B>,
    step: ModularGruStepCache<B>,
}

/// What [`ModularGruModules::recurrent_backward`] needs from
/// [`ModularGruModules::recurrent_forward`]: the hidden-side modules and the gates.
#[derive(Debug)]
pub struct ModularGruStepCache<B: Backend> {
    recurrent: ModularCache<B>,
    gates: GruGatesCache<B>,
}

impl ModularGruModules {
    /// Registers `{name}.input.*` (`M` modules `d_in -> 3h`) and `{name}.recurrent.*` (`M`
    /// modules `h -> 3h`), each stacked-Glorot initialised with zero biases.
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        hidden: usize,
        modules: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let h3 = 3 * hidden;
        let input = ModularLinear::new(b, params, &format!("{name}.input"), modules, d_in, h3, rng);
        let recurrent = ModularLinear::new(
            b,
            params,
            &format!("{name}.recurrent"),
            modules,
            hidden,
            h3,
            rng,
        );
        ModularGruModules {
            input,
            recurrent,
            d_in,
            hidden,
        }
    }

    /// Number of modules `M`.
    pub fn modules(&self) -> usize {
        self.input.modules
    }

    /// Parameters of one module: `(d_in + h) 3h` weights and `6h` biases.
    pub fn params_per_module(&self) -> usize {
        (self.d_in + self.hidden) * 3 * self.hidden + 6 * self.hidden
    }

    /// One step: `h_t [n, hidden]` from `x [n, d_in]` and `h_prev [n, hidden]` through the
    /// routed modules, optionally gate-weighted (`gate_values: [n, K]`).
    ///
    /// # Panics
    /// If the shapes disagree with the modules or the routing.
    #[track_caller]
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        h_prev: &B::Tensor,
        routing: &Routing,
        gate_values: Option<&B::Tensor>,
    ) -> (B::Tensor, ModularGruModulesCache<B>) {
        let (gx, input) = self.input.forward(b, params, x, routing, gate_values);
        let (h, step) = self.recurrent_forward(b, params, &gx, h_prev, routing, gate_values);
        (h, ModularGruModulesCache { input, step })
    }

    /// The part of [`ModularGruModules::forward`] after the input-side modules: from their
    /// output `gx [n, 3h]` (computed by the caller, for example over a whole window at once
    /// when the selections are known in advance) and `h_prev`, the next state.
    ///
    /// # Panics
    /// If the shapes disagree with the modules or the routing.
    #[track_caller]
    pub fn recurrent_forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        gx: &B::Tensor,
        h_prev: &B::Tensor,
        routing: &Routing,
        gate_values: Option<&B::Tensor>,
    ) -> (B::Tensor, ModularGruStepCache<B>) {
        let (gh, recurrent) = self
            .recurrent
            .forward(b, params, h_prev, routing, gate_values);
        let (h, gates) = gru_gates_forward(b, &gru_gates_from_parts(b, gx, &gh), h_prev);
        (h, ModularGruStepCache { recurrent, gates })
    }

    /// Backward of [`ModularGruModules::recurrent_forward`] given `dh = dL/dh_t`: accumulates
    /// the hidden-side modules' gradients and returns `(d_gx, dh_prev, d_gate_values)`, the
    /// last being the hidden side's share only.
    #[track_caller]
    pub fn recurrent_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularGruStepCache<B>,
        dh: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, B::Tensor, Option<B::Tensor>) {
        let (d_pre, mut dh_prev) = gru_gates_backward(b, &cache.gates, dh);
        let (dgx, dgh) = gru_gates_split_grad(b, &d_pre);
        let (dh_rec, dg_h) =
            self.recurrent
                .backward(b, params, routing, cache.recurrent, &dgh, grads);
        b.axpy(1.0, &dh_rec, &mut dh_prev);
        (dgx, dh_prev, dg_h)
    }

    /// [`ModularGruModules::recurrent_backward`] without the hidden-side modules' weight
    /// gradient (ungated steps only): returns `(d_gx, d_gh, dh_prev)`, and the caller adds
    /// that gradient with `recurrent.weight_grads(routing, h_prev, d_gh, ..)`, for example
    /// once over a whole window's rows, which are many more per module than one step's.
    #[track_caller]
    pub fn recurrent_backward_deferred<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularGruStepCache<B>,
        dh: &B::Tensor,
    ) -> (B::Tensor, B::Tensor, B::Tensor) {
        let (d_pre, mut dh_prev) = gru_gates_backward(b, &cache.gates, dh);
        let (dgx, dgh) = gru_gates_split_grad(b, &d_pre);
        let dh_rec = self
            .recurrent
            .input_grad(b, params, routing, cache.recurrent, &dgh);
        b.axpy(1.0, &dh_rec, &mut dh_prev);
        (dgx, dgh, dh_prev)
    }

    /// Backward of [`ModularGruModules::forward`] given `dh = dL/dh_t`: accumulates the
    /// modules' gradients and returns `(dx, dh_prev, d_gate_values)` (the last only when the
    /// forward pass had gate values).
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularGruModulesCache<B>,
        dh: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, B::Tensor, Option<B::Tensor>) {
        let (dgx, dh_prev, dg_h) =
            self.recurrent_backward(b, params, routing, cache.step, dh, grads);
        let (dx, dg_x) = self
            .input
            .backward(b, params, routing, cache.input, &dgx, grads);
        let d_gate_values = match (dg_x, dg_h) {
            (Some(mut gx), Some(gh)) => {
                b.axpy(1.0, &gh, &mut gx);
                Some(gx)
            }
            _ => None,
        };
        (dx, dh_prev, d_gate_values)
    }
}

/// A GRU cell with modular weights: a [`Controller`] on `xh = [x_t; h_{t-1}]` chooses `K` of
/// the [`ModularGruModules`] per row and time step.
///
/// A step is split in two so that the caller chooses the selection in between (sampled,
/// greedy, or a stored EM assignment): [`ModularGruCell::prepare`] concatenates and runs the
/// controller, [`ModularGruCell::finish`] runs the routed modules and the gates.
#[derive(Clone, Debug)]
pub struct ModularGruCell {
    /// Controller on `[x_t; h_{t-1}]`.
    pub controller: Controller,
    /// The modules.
    pub modules: ModularGruModules,
    /// Whether the controller's loss sends gradient into its input `[x_t; h_{t-1}]` (the
    /// specification's choice, and the default) or only into the controller's own weights.
    pub controller_input_grad: bool,
}

/// A step after [`ModularGruCell::prepare`]: the concatenated input and the controller's
/// distributions, from which the caller picks a selection.
#[derive(Debug)]
pub struct PreparedStep<B: Backend> {
    x: B::Tensor,
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

/// What [`ModularGruCell::step_backward`] (or, after [`ModularGruCell::finish_with_input`],
/// [`ModularGruCell::step_backward_to_input`]) needs from one step.
#[derive(Debug)]
pub struct ModularGruCache<B: Backend> {
    controller: ControllerOutput<B>,
    /// The selection `log p(a_t | .)` was taken at: the routed one, or a guided step's target.
    target: Selection,
    routing: Routing,
    /// The input-side modules' cache, absent when the caller computed `gx` itself.
    input: Option<ModularCache<B>>,
    step: ModularGruStepCache<B>,
}

/// The gradients [`ModularGruCell::step_backward_to_input`] returns.
#[derive(Debug)]
pub struct StepInputGrads<B: Backend> {
    /// `dL/d gx`, `[n, 3h]`: for the input-side modules' backward, which the caller runs.
    pub d_gx: B::Tensor,
    /// `dL/d gh`, `[n, 3h]`: for the hidden-side modules' weight gradient, which the caller
    /// accumulates (`modules.recurrent.weight_grads` with `h_{t-1}`).
    pub d_gh: B::Tensor,
    /// The controller's gradient into `x_t`, `[n, d_in]` (absent when
    /// `controller_input_grad` is off).
    pub dx_controller: Option<B::Tensor>,
    /// `dL/dh_{t-1}`, `[n, hidden]`.
    pub dh_prev: B::Tensor,
}

impl ModularGruCell {
    /// Registers `{name}.ctrl.*` and the modules `{name}.input.*`, `{name}.recurrent.*`.
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
        let modules = ModularGruModules::new(b, params, name, d_in, hidden, modules, rng);
        ModularGruCell {
            controller,
            modules,
            controller_input_grad: true,
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.modules.d_in
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.modules.hidden
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
        let (d_in, hidden) = (self.d_in(), self.hidden());
        let n = b.shape(x)[0];
        assert_eq!(b.shape(x), [n, d_in], "modular GRU input must be [n, d_in]");
        assert_eq!(
            b.shape(h_prev),
            [n, hidden],
            "modular GRU state must be [n, hidden]"
        );
        let mut xh = b.zeros([n, d_in + hidden]);
        b.copy_cols(x, 0, &mut xh, 0, d_in, false);
        b.copy_cols(h_prev, 0, &mut xh, d_in, hidden, false);
        let controller = self.controller.forward(b, params, &xh);
        PreparedStep {
            x: b.duplicate(x),
            controller,
        }
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
        let target = selection.clone();
        self.finish_guided(b, params, step, h_prev, selection, target)
    }

    /// [`ModularGruCell::finish`] routed by `selection` but with the controller's
    /// log-probability (and, in the backward pass, its loss) taken at `target`: the modules
    /// run the route the controller chose while the controller learns towards another
    /// selection (EM's per-step targets along the greedy path). Returns `h_t`,
    /// `log p(target | x_t, h_{t-1}) [n, 1]` and the step cache.
    ///
    /// # Panics
    /// If `target` has another shape than `selection`.
    #[track_caller]
    pub fn finish_guided<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        step: PreparedStep<B>,
        h_prev: &B::Tensor,
        selection: Selection,
        target: Selection,
    ) -> (B::Tensor, B::Tensor, ModularGruCache<B>) {
        assert_eq!(
            (target.rows(), target.k()),
            (selection.rows(), selection.k()),
            "a guided step's target must have the route's rows and K"
        );
        let routing = Routing::new(&selection, self.modules.modules());
        let (gx, input) = self
            .modules
            .input
            .forward(b, params, &step.x, &routing, None);
        self.finish_routed(b, params, step, &gx, Some(input), h_prev, target, routing)
    }

    /// [`ModularGruCell::finish`] with the input-side modules' output `gx [n, 3h]` for this
    /// step's selection already computed by the caller (over a whole window at once, when the
    /// selections are fixed in advance). Undo it with
    /// [`ModularGruCell::step_backward_to_input`].
    #[track_caller]
    pub fn finish_with_input<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        step: PreparedStep<B>,
        gx: &B::Tensor,
        h_prev: &B::Tensor,
        selection: Selection,
    ) -> (B::Tensor, B::Tensor, ModularGruCache<B>) {
        let routing = Routing::new(&selection, self.modules.modules());
        self.finish_routed(b, params, step, gx, None, h_prev, selection, routing)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_routed<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        step: PreparedStep<B>,
        gx: &B::Tensor,
        input: Option<ModularCache<B>>,
        h_prev: &B::Tensor,
        target: Selection,
        routing: Routing,
    ) -> (B::Tensor, B::Tensor, ModularGruCache<B>) {
        let log_p = self.controller.log_prob(b, &step.controller, &target);
        let (h, cache) = self
            .modules
            .recurrent_forward(b, params, gx, h_prev, &routing, None);
        let cache = ModularGruCache {
            controller: step.controller,
            target,
            routing,
            input,
            step: cache,
        };
        (h, log_p, cache)
    }

    /// Backward of one step given `dh = dL/dh_t` and `d_logp = dL/d log p(a_t | .)`
    /// (`[n, 1]`); accumulates parameter gradients and returns `(dx_t, dh_{t-1})`. The
    /// controller's gradient flows into its input, as the specification asks (no
    /// stop-gradient), unless `controller_input_grad` is off.
    ///
    /// # Panics
    /// If the step came from [`ModularGruCell::finish_with_input`] (its input-side backward
    /// is the caller's: use [`ModularGruCell::step_backward_to_input`]).
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
        let ModularGruCache {
            controller,
            target,
            routing,
            input,
            step,
        } = cache;
        let input = input
            .expect("a step finished with a given input projection needs step_backward_to_input");
        let (d_gx, mut dh_prev, _) = self
            .modules
            .recurrent_backward(b, params, &routing, step, dh, grads);
        let dx_controller =
            self.controller_backward(b, params, controller, &target, d_logp, &mut dh_prev, grads);
        let (mut dx, _) = self
            .modules
            .input
            .backward(b, params, &routing, input, &d_gx, grads);
        if let Some(dxc) = &dx_controller {
            b.axpy(1.0, dxc, &mut dx);
        }
        (dx, dh_prev)
    }

    /// Backward of one step up to the modules' outputs: accumulates the controller's
    /// gradients and returns `d gx`, `d gh`, the controller's gradient into `x_t` and
    /// `dh_{t-1}`. The modules' weight gradients are the caller's (see [`StepInputGrads`]):
    /// a caller that ran the input side over a whole window accumulates both sides' weight
    /// gradients over the whole window at once.
    #[track_caller]
    pub fn step_backward_to_input<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: ModularGruCache<B>,
        dh: &B::Tensor,
        d_logp: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> StepInputGrads<B> {
        let ModularGruCache {
            controller,
            target,
            routing,
            step,
            ..
        } = cache;
        let (d_gx, d_gh, mut dh_prev) = self
            .modules
            .recurrent_backward_deferred(b, params, &routing, step, dh);
        let dx_controller =
            self.controller_backward(b, params, controller, &target, d_logp, &mut dh_prev, grads);
        StepInputGrads {
            d_gx,
            d_gh,
            dx_controller,
            dh_prev,
        }
    }

    /// The controller's backward: accumulates its parameter gradients and, unless
    /// `controller_input_grad` is off, adds its gradient into `h_{t-1}` to `dh_prev` and
    /// returns its gradient into `x_t`.
    #[allow(clippy::too_many_arguments)]
    fn controller_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        controller: ControllerOutput<B>,
        selection: &Selection,
        d_logp: &B::Tensor,
        dh_prev: &mut B::Tensor,
        grads: &mut Grads<B>,
    ) -> Option<B::Tensor> {
        let dxh = self
            .controller
            .backward(b, params, controller, selection, d_logp, grads);
        self.controller_input_grad.then(|| {
            let (n, d_in) = (b.shape(dh_prev)[0], self.d_in());
            let mut dx = b.zeros([n, d_in]);
            b.copy_cols(&dxh, 0, &mut dx, 0, d_in, false);
            b.copy_cols(&dxh, d_in, dh_prev, 0, self.hidden(), true);
            dx
        })
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
