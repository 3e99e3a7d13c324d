//! The modular linear layer: M linear modules stored stacked, evaluated by grouped GEMMs.

use modula_nn::{Ctx, Grads, Module, ParamId, ParamStore};
use modula_tensor::{Backend, GroupedOp};
use rand::Rng;

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
    /// Input rows gathered in routing order, `[P, d_in]`.
    xs: B::Tensor,
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
        let xs = b.gather_rows(x, &routing.pair_rows);
        // Each pair's row starts as its module's bias and the GEMM accumulates onto it: one
        // pass over the output instead of zeroing it and adding the biases afterwards.
        let mut ys = b.gather_rows(params.get(self.bias), &routing.pair_modules);
        b.grouped_matmul(
            GroupedOp::XW,
            &xs,
            params.get(self.weight),
            &routing.offsets,
            1.0,
            &mut ys,
        );
        let (y, ys, pair_gates) = match gates {
            None => (
                b.segment_sum_rows(&ys, &routing.row_pos, &routing.row_ptr),
                None,
                None,
            ),
            Some(g) => {
                assert_eq!(
                    b.shape(g),
                    [routing.rows(), routing.k()],
                    "gates must be [n, K]"
                );
                let flat = b.reshape(b.duplicate(g), [routing.rows() * routing.k(), 1]);
                let pg = b.gather_rows(&flat, &routing.pair_slots);
                let mut scaled = b.duplicate(&ys);
                b.scale_rows(&mut scaled, &pg);
                (
                    b.segment_sum_rows(&scaled, &routing.row_pos, &routing.row_ptr),
                    Some(ys),
                    Some(pg),
                )
            }
        };
        (y, ModularCache { xs, ys, pair_gates })
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
        let mut dys = self.gather_output_grad(b, routing, dy);
        let d_gates = match (&cache.ys, &cache.pair_gates) {
            (Some(ys), Some(pg)) => {
                let d_pair = b.row_dot(&dys, ys);
                let mut dg = b.zeros([routing.rows() * routing.k(), 1]);
                b.scatter_add_rows(&mut dg, &d_pair, &routing.pair_slots);
                b.scale_rows(&mut dys, pg);
                Some(b.reshape(dg, [routing.rows(), routing.k()]))
            }
            _ => None,
        };
        self.accumulate_gathered(b, routing, &cache.xs, &dys, grads);
        (
            self.input_grad_gathered(b, params, routing, cache.xs, &dys),
            d_gates,
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
        let dys = self.gather_output_grad(b, routing, dy);
        self.input_grad_gathered(b, params, routing, cache.xs, &dys)
    }

    /// `dy` (`[n, d_out]`) gathered in routing order, after checking its shape.
    #[track_caller]
    fn gather_output_grad<B: Backend>(
        &self,
        b: &B,
        routing: &Routing,
        dy: &B::Tensor,
    ) -> B::Tensor {
        assert_eq!(
            b.shape(dy),
            [routing.rows(), self.d_out],
            "modular layer output gradient shape"
        );
        b.gather_rows(dy, &routing.pair_rows)
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
        let xs = b.gather_rows(x, &routing.pair_rows);
        let dys = b.gather_rows(dy, &routing.pair_rows);
        self.accumulate_gathered(b, routing, &xs, &dys, grads);
    }

    /// `dW_m += X_m^T dY_m` and `db_m += sum dY_m` over inputs and output gradients already
    /// gathered in routing order.
    fn accumulate_gathered<B: Backend>(
        &self,
        b: &B,
        routing: &Routing,
        xs: &B::Tensor,
        dys: &B::Tensor,
        grads: &mut Grads<B>,
    ) {
        let (dw, beta) =
            grads.product_entry(b, self.weight, [self.modules * self.d_in, self.d_out]);
        b.grouped_matmul(GroupedOp::XtY, xs, dys, &routing.offsets, beta, dw);
        let identity: Vec<u32> = (0..routing.pairs() as u32).collect();
        let db = b.segment_sum_rows(dys, &identity, &routing.offsets);
        grads.accumulate(b, self.bias, &db);
    }

    /// `dx` from output gradients gathered in routing order, overwriting the spent gathered
    /// inputs `xs` (they have the input gradient's shape, so no new buffer is zeroed).
    fn input_grad_gathered<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        xs: B::Tensor,
        dys: &B::Tensor,
    ) -> B::Tensor {
        let mut dxs = xs;
        b.grouped_matmul(
            GroupedOp::XWt,
            dys,
            params.get(self.weight),
            &routing.offsets,
            0.0,
            &mut dxs,
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
