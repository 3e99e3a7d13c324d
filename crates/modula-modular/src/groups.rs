//! The neuron-group layer: a dense ReLU layer whose output neurons are split into `M` equal
//! groups, the groups being the modules; each row computes only the `K` groups it selects and
//! leaves the others' neurons at zero.
//!
//! A group of a trained dense layer is not a linear module: its neurons' output is
//! `relu(x W_g + b_g)` and its contribution to the next layer is that output times the next
//! layer's rows for those neurons (which read zero when the group is not selected). So a
//! selection must name each group at most once: the controller that routes this layer draws
//! its `K` groups without repetition (see [`crate::Controller::distinct`]).

use modula_nn::{Grads, Init, ParamId, ParamStore};
use modula_tensor::{Backend, GroupedOp, UnaryOp};
use rand::Rng;

use crate::gating::pair_gates;
use crate::selection::Routing;

/// `M` groups of `width` ReLU neurons over inputs of width `d_in`: group `m` computes
/// `relu(x W_m + b_m)` into output columns `m * width .. (m + 1) * width`.
///
/// The weights are stacked as one `[M * d_in, width]` parameter (block `m` is `W_m`, the
/// group's columns of a dense `[d_in, M * width]` weight) and the biases as `[M, width]`.
#[derive(Clone, Debug)]
pub struct GroupedRelu {
    /// Stacked weights `[M * d_in, width]`.
    pub weight: ParamId,
    /// Stacked biases `[M, width]`.
    pub bias: ParamId,
    /// Number of groups `M`.
    pub modules: usize,
    /// Input width.
    pub d_in: usize,
    /// Neurons per group.
    pub width: usize,
}

/// What a [`GroupedRelu`] forward pass keeps for backward.
#[derive(Debug)]
pub struct GroupedReluCache<B: Backend> {
    /// The layer's input `[n, d_in]`.
    x: B::Tensor,
    /// Each computed pair's pre-activation `[P, width]`, in routing order.
    z: B::Tensor,
    /// Its ReLU.
    a: B::Tensor,
    /// The gate of each pair `[P, 1]` (only with gates).
    pair_gates: Option<B::Tensor>,
}

impl GroupedRelu {
    /// Registers `{name}.weight` (He-initialised over the fan-in `d_in`, as a dense ReLU
    /// layer's) and `{name}.bias` (zeros).
    ///
    /// # Panics
    /// If `modules` or `width` is zero.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        (modules, width): (usize, usize),
        d_in: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(
            modules > 0 && width > 0,
            "a group layer needs groups of neurons"
        );
        let w = Init::He.sample(rng, d_in, modules * width, modules * d_in * width);
        let weight = params.add(
            format!("{name}.weight"),
            backend.upload([modules * d_in, width], &w),
        );
        let bias = params.add(format!("{name}.bias"), backend.zeros([modules, width]));
        GroupedRelu {
            weight,
            bias,
            modules,
            d_in,
            width,
        }
    }

    /// Output width, `M * width`.
    pub fn d_out(&self) -> usize {
        self.modules * self.width
    }

    /// Where each pair's output lands among the rows of the output viewed as
    /// `[n * M, width]`: row `row * M + module`.
    fn out_rows(&self, routing: &Routing) -> Vec<u32> {
        routing
            .pair_rows
            .iter()
            .zip(&routing.pair_modules)
            .map(|(&r, &m)| r * self.modules as u32 + m)
            .collect()
    }

    /// Forward pass for the rows of `x` (`[n, d_in]`) routed by `routing` (a module named
    /// twice in a row is computed once), optionally scaling each group's output by its slot's
    /// gate (`gates: [n, K]`). Returns `[n, M * width]`, zero outside the selected groups.
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
    ) -> (B::Tensor, GroupedReluCache<B>) {
        let n = routing.rows();
        assert_eq!(b.shape(x), [n, self.d_in], "group layer input shape");
        assert_eq!(
            routing.modules(),
            self.modules,
            "routing was built for another group count"
        );
        let z = b.grouped_product_rows(
            GroupedOp::XW,
            x,
            params.get(self.weight),
            &routing.pair_rows,
            &routing.offsets,
            Some(params.get(self.bias)),
        );
        let a = b.unary(UnaryOp::Relu, &z);
        let pg = gates.map(|g| pair_gates(b, routing, g));
        let mut y = b.zeros([n * self.modules, self.width]);
        match &pg {
            None => b.scatter_add_rows(&mut y, &a, &self.out_rows(routing)),
            Some(pg) => {
                let mut scaled = b.duplicate(&a);
                b.scale_rows(&mut scaled, pg);
                b.scatter_add_rows(&mut y, &scaled, &self.out_rows(routing));
            }
        }
        let cache = GroupedReluCache {
            x: b.duplicate(x),
            z,
            a,
            pair_gates: pg,
        };
        (b.reshape(y, [n, self.d_out()]), cache)
    }

    /// Backward pass: accumulates the weight and bias gradients, returns `dL/dx`
    /// (`[n, d_in]`) and, when the forward pass had gates, `dL/dgates` (`[n, K]`).
    ///
    /// # Panics
    /// If `dy` is not `[n, M * width]`.
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: GroupedReluCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        let n = routing.rows();
        assert_eq!(
            b.shape(dy),
            [n, self.d_out()],
            "group layer output gradient shape"
        );
        let dy = b.reshape(b.duplicate(dy), [n * self.modules, self.width]);
        let mut da = b.gather_rows(&dy, &self.out_rows(routing));
        let dg = cache.pair_gates.as_ref().map(|pg| {
            let d_pair = b.row_dot(&da, &cache.a);
            let mut dg = b.zeros([n * routing.k(), 1]);
            b.scatter_add_rows(&mut dg, &d_pair, &routing.pair_slots);
            b.scale_rows(&mut da, pg);
            b.reshape(dg, [n, routing.k()])
        });
        let dz = b.unary_backward(UnaryOp::Relu, &cache.z, &cache.a, &da);
        // The pairs' rows are in routing order from here on: the input rows are gathered
        // once and every product reads through the identity.
        let xs = b.gather_rows(&cache.x, &routing.pair_rows);
        let identity: Vec<u32> = (0..routing.pairs() as u32).collect();
        let (dw, beta) =
            grads.product_entry(b, self.weight, [self.modules * self.d_in, self.width]);
        b.grouped_matmul_rows(
            GroupedOp::XtY,
            &xs,
            &dz,
            &identity,
            &routing.offsets,
            beta,
            dw,
        );
        let db = b.segment_sum_rows(&dz, &identity, &routing.offsets);
        grads.accumulate(b, self.bias, &db);
        let dxs = b.grouped_product_rows(
            GroupedOp::XWt,
            &dz,
            params.get(self.weight),
            &identity,
            &routing.offsets,
            None,
        );
        (
            b.segment_sum_rows(&dxs, &routing.row_pos, &routing.row_ptr),
            dg,
        )
    }
}
