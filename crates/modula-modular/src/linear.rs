//! The modular linear layer: M linear modules stored stacked, evaluated by grouped GEMMs.

use modula_nn::{Ctx, Grads, Module, ParamId, ParamStore};
use modula_tensor::{Backend, GroupedOp};
use rand::Rng;

use crate::gating::{gated_sum, gated_sum_backward, pair_gates};
use crate::selection::Routing;

/// Glorot-uniform values over a stacked `[M, d_in, d_out]` tensor: the fans count all `M`
/// blocks (`fan_in = M d_in`, `fan_out = M d_out`), as the reference library does, so each
/// module starts about `1/sqrt(M)` smaller than a standalone layer.
pub fn stacked_glorot(rng: &mut impl Rng, modules: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    modula_nn::glorot_uniform(rng, modules * d_in, modules * d_out, modules * d_in * d_out)
}

/// A layer of `M` linear modules `f_m(x) = x W_m + b_m`; each row is sent through the modules
/// its selection names and the distinct modules' outputs are summed.
///
/// Weights are stacked as one `[M * d_in, d_out]` parameter (block `m` is `W_m`) and biases as
/// `[M, d_out]` (zeros at start).
#[derive(Clone, Debug)]
pub struct ModularLinear {
    /// Stacked weights `[M * d_in, d_out]`.
    pub weight: ParamId,
    /// Stacked biases `[M, d_out]`.
    pub bias: ParamId,
    /// Number of modules `M`.
    pub modules: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

/// What the modular layer keeps for backward.
#[derive(Debug)]
pub struct ModularCache<B: Backend> {
    /// The layer's input, `[n, d_in]` (the backward reads it through the routing's pair
    /// rows).
    x: B::Tensor,
    /// Ungated module outputs in routing order, `[P, d_out]` (kept only with gates).
    ys: Option<B::Tensor>,
    /// Gate weight of each pair, `[P, 1]` (only with gates).
    pair_gates: Option<B::Tensor>,
}

impl ModularLinear {
    /// Registers `{name}.weight` (stacked Glorot) and `{name}.bias` (zeros).
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        modules: usize,
        d_in: usize,
        d_out: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(modules > 0, "a modular layer needs at least one module");
        let w = stacked_glorot(rng, modules, d_in, d_out);
        let weight = params.add(
            format!("{name}.weight"),
            backend.upload([modules * d_in, d_out], &w),
        );
        let bias = params.add(format!("{name}.bias"), backend.zeros([modules, d_out]));
        ModularLinear {
            weight,
            bias,
            modules,
            d_in,
            d_out,
        }
    }

    /// Forward pass for the rows of `x` (`[n, d_in]`) routed by `routing`, optionally weighting
    /// each selected module's output by a gate (`gates: [n, K]`, one weight per slot; a module
    /// chosen in two slots uses the weight of the first). Returns `[n, d_out]`.
    ///
    /// # Panics
    /// If the shapes disagree with the layer or the routing.
    #[track_caller]
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
    ) -> (B::Tensor, ModularCache<B>) {
        assert_eq!(
            b.shape(x),
            [routing.rows(), self.d_in],
            "modular layer input shape"
        );
        assert_eq!(
            routing.modules(),
            self.modules,
            "routing was built for another module count"
        );
        // The GEMM reads each pair's input row through the routing (the inputs are never
        // copied into routing order) and stores its module's bias with the product.
        let ys = b.grouped_product_rows(
            GroupedOp::XW,
            x,
            params.get(self.weight),
            &routing.pair_rows,
            &routing.offsets,
            Some(params.get(self.bias)),
        );
        let (y, ys, pair_gates) = match gates {
            None => (
                b.segment_sum_rows(&ys, &routing.row_pos, &routing.row_ptr),
                None,
                None,
            ),
            Some(g) => {
                let pg = pair_gates(b, routing, g);
                (gated_sum(b, routing, &ys, &pg), Some(ys), Some(pg))
            }
        };
        let x = b.duplicate(x);
        (y, ModularCache { x, ys, pair_gates })
    }

    /// Backward pass: accumulates weight and bias gradients, returns `dL/dx` (`[n, d_in]`)
    /// and, when the forward pass had gates, `dL/dgates` (`[n, K]`).
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        self.check_output_grad(b, routing, dy);
        let (Some(ys), Some(pg)) = (&cache.ys, &cache.pair_gates) else {
            // Ungated: every product reads the pairs' rows of `x` and `dy` through the routing.
            self.accumulate(b, routing, &cache.x, dy, &routing.pair_rows, grads);
            return (
                self.input_grad_from(b, params, routing, dy, &routing.pair_rows),
                None,
            );
        };
        // Gated: each pair's output gradient is scaled by its gate, so the scaled rows are
        // written out in routing order and read through the identity.
        let (dys, dg) = gated_sum_backward(b, routing, dy, ys, pg);
        let xs = b.gather_rows(&cache.x, &routing.pair_rows);
        let identity: Vec<u32> = (0..routing.pairs() as u32).collect();
        self.accumulate(b, routing, &xs, &dys, &identity, grads);
        (
            self.input_grad_from(b, params, routing, &dys, &identity),
            Some(dg),
        )
    }

    /// The input gradient alone of an ungated [`ModularLinear::backward`], for a caller that
    /// accumulates the weight gradient itself with [`ModularLinear::weight_grads`] (for
    /// example once over a whole window's rows instead of once per time step).
    ///
    /// # Panics
    /// If the shapes disagree with the layer or the routing, or the forward pass had gates.
    #[track_caller]
    pub fn input_grad<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularCache<B>,
        dy: &B::Tensor,
    ) -> B::Tensor {
        assert!(
            cache.pair_gates.is_none(),
            "input_grad is for ungated forward passes; a gated one needs backward"
        );
        self.check_output_grad(b, routing, dy);
        self.input_grad_from(b, params, routing, dy, &routing.pair_rows)
    }

    /// Panics unless `dy` is `[n, d_out]`.
    #[track_caller]
    fn check_output_grad<B: Backend>(&self, b: &B, routing: &Routing, dy: &B::Tensor) {
        assert_eq!(
            b.shape(dy),
            [routing.rows(), self.d_out],
            "modular layer output gradient shape"
        );
    }

    /// Accumulates the weight and bias gradients of the ungated layer for inputs `x`
    /// (`[n, d_in]`) routed by `routing` with output gradient `dy` (`[n, d_out]`): the part of
    /// [`ModularLinear::backward`] that [`ModularLinear::input_grad`] leaves out.
    ///
    /// # Panics
    /// If the shapes disagree with the layer or the routing.
    #[track_caller]
    pub fn weight_grads<B: Backend>(
        &self,
        b: &B,
        routing: &Routing,
        x: &B::Tensor,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) {
        assert_eq!(
            (b.shape(x), b.shape(dy)),
            ([routing.rows(), self.d_in], [routing.rows(), self.d_out]),
            "modular layer input and output gradient shapes"
        );
        self.accumulate(b, routing, x, dy, &routing.pair_rows, grads);
    }

    /// `dW_m += X_m^T dY_m` and `db_m += sum dY_m`, where pair `p`'s rows are row `rows[p]`
    /// of `x` and of `dy` (the routing's pair rows, or the identity for rows already in
    /// routing order).
    fn accumulate<B: Backend>(
        &self,
        b: &B,
        routing: &Routing,
        x: &B::Tensor,
        dy: &B::Tensor,
        rows: &[u32],
        grads: &mut Grads<B>,
    ) {
        let (dw, beta) =
            grads.product_entry(b, self.weight, [self.modules * self.d_in, self.d_out]);
        b.grouped_matmul_rows(GroupedOp::XtY, x, dy, rows, &routing.offsets, beta, dw);
        let db = b.segment_sum_rows(dy, rows, &routing.offsets);
        grads.accumulate(b, self.bias, &db);
    }

    /// `dx` from output gradients whose pair `p` is row `rows[p]` of `dy`.
    fn input_grad_from<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        dy: &B::Tensor,
        rows: &[u32],
    ) -> B::Tensor {
        let dxs = b.grouped_product_rows(
            GroupedOp::XWt,
            dy,
            params.get(self.weight),
            rows,
            &routing.offsets,
            None,
        );
        b.segment_sum_rows(&dxs, &routing.row_pos, &routing.row_ptr)
    }

    /// This layer with a fixed routing, as a [`Module`] (no gates), so that it stacks with
    /// other layers and sits inside other networks.
    pub fn routed<'a>(&'a self, routing: &'a Routing) -> Routed<'a> {
        Routed {
            layer: self,
            routing,
        }
    }
}

/// A [`ModularLinear`] bound to a routing: a plain [`Module`].
#[derive(Clone, Copy, Debug)]
pub struct Routed<'a> {
    layer: &'a ModularLinear,
    routing: &'a Routing,
}

impl<B: Backend> Module<B> for Routed<'_> {
    type Cache = ModularCache<B>;

    fn forward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        x: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache) {
        self.layer.forward(b, p, x, self.routing, None)
    }

    fn backward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        cache: Self::Cache,
        dy: &B::Tensor,
        g: &mut Grads<B>,
    ) -> B::Tensor {
        self.layer.backward(b, p, self.routing, cache, dy, g).0
    }
}
