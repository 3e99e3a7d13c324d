//! Modules that share a base: module `m`'s weights are `W + D_m`, so the base learns from
//! every routed row while each delta learns from its own.

use modula_nn::{Grads, ParamId, ParamStore};
use modula_tensor::{Backend, ReduceOp};

use crate::linear::ModularLinear;

/// A reparametrisation of a [`ModularLinear`] layer: module `m`'s weight is `W + D_m` and
/// its bias `c + e_m`, with the base `(W [d_in, d_out], c [1, d_out])` shared by all modules
/// and the deltas `(D [M * d_in, d_out], e [M, d_out])` stacked like the layer's own tensors.
///
/// The layer's tensors become derived parameters ([`ParamStore::mark_derived`]): forward and
/// backward passes read and write them unchanged, [`SharedBase::fold_grads`] moves their
/// gradients onto the base (the sum over modules) and the deltas (each module's own), and
/// [`SharedBase::refresh`] recomputes them after every update. A routed row still costs one
/// module's product, so compute stays proportional to K, while the base is trained on every
/// row whatever the routing: a modular layer whose modules do not each learn from scratch
/// on their share of the data.
#[derive(Clone, Debug)]
pub struct SharedBase {
    /// The layer's stacked weight `[M * d_in, d_out]`, derived.
    pub weight: ParamId,
    /// The layer's stacked bias `[M, d_out]`, derived.
    pub bias: ParamId,
    /// The shared weight `[d_in, d_out]`.
    pub base_weight: ParamId,
    /// The shared bias `[1, d_out]`.
    pub base_bias: ParamId,
    /// The modules' weight deltas `[M * d_in, d_out]`.
    pub delta_weight: ParamId,
    /// The modules' bias deltas `[M, d_out]`.
    pub delta_bias: ParamId,
    modules: usize,
    d_in: usize,
    d_out: usize,
}

impl SharedBase {
    /// Reparametrises `layer`: registers `{name}.base.{weight,bias}` (the base weight set to
    /// `base_weight`, `d_in * d_out` values, the base bias to zero) and
    /// `{name}.delta.{weight,bias}` (the layer's current tensors, so the modules start as
    /// the base plus their usual initialisation), marks the layer's tensors derived and sets
    /// them to base plus delta.
    ///
    /// # Panics
    /// If `base_weight` does not hold `d_in * d_out` values.
    #[track_caller]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        name: &str,
        layer: &ModularLinear,
        base_weight: &[f32],
    ) -> Self {
        let (d_in, d_out) = (layer.d_in, layer.d_out);
        assert_eq!(base_weight.len(), d_in * d_out, "base weight size");
        let base_weight = params.add(
            format!("{name}.base.weight"),
            b.upload([d_in, d_out], base_weight),
        );
        let base_bias = params.add(format!("{name}.base.bias"), b.zeros([1, d_out]));
        let delta_weight = params.add(
            format!("{name}.delta.weight"),
            b.duplicate(params.get(layer.weight)),
        );
        let delta_bias = params.add(
            format!("{name}.delta.bias"),
            b.duplicate(params.get(layer.bias)),
        );
        params.mark_derived(layer.weight);
        params.mark_derived(layer.bias);
        let shared = SharedBase {
            weight: layer.weight,
            bias: layer.bias,
            base_weight,
            base_bias,
            delta_weight,
            delta_bias,
            modules: layer.modules,
            d_in,
            d_out,
        };
        shared.refresh(b, params);
        shared
    }

    /// The (weight, bias) pairs as `(derived, base, delta, values per module)`.
    fn pairs(&self) -> [(ParamId, ParamId, ParamId, usize); 2] {
        [
            (
                self.weight,
                self.base_weight,
                self.delta_weight,
                self.d_in * self.d_out,
            ),
            (self.bias, self.base_bias, self.delta_bias, self.d_out),
        ]
    }

    /// Sets the layer's tensors to base plus delta, module by module; call it after every
    /// change to the base or the deltas (each optimiser step, a restored checkpoint).
    pub fn refresh<B: Backend>(&self, b: &B, params: &mut ParamStore<B>) {
        for (derived, base, delta, per_module) in self.pairs() {
            let shape = b.shape(params.get(derived));
            let mut v = b.reshape(b.duplicate(params.get(delta)), [self.modules, per_module]);
            let base = b.reshape(b.duplicate(params.get(base)), [1, per_module]);
            b.add_row(&mut v, &base);
            *params.get_mut(derived) = b.reshape(v, shape);
        }
    }

    /// Moves this step's gradients of the layer's tensors onto the deltas (unchanged) and the
    /// base (summed over modules), and drops them from the layer's tensors, so that the
    /// optimiser trains the base and the deltas only. A step whose backward pass did not
    /// reach the layer leaves everything as it is.
    pub fn fold_grads<B: Backend>(&self, b: &B, grads: &mut Grads<B>) {
        for (derived, base, delta, per_module) in self.pairs() {
            let Some(g) = grads.get(derived).map(|g| b.duplicate(g)) else {
                continue;
            };
            grads.discard(derived);
            grads.accumulate(b, delta, &g);
            let shape = b.shape(&g);
            let per_row = b.reshape(g, [self.modules, per_module]);
            let summed = b.reduce_cols(ReduceOp::Sum, &per_row);
            let base_shape = [shape[0] / self.modules, shape[1]];
            grads.accumulate(b, base, &b.reshape(summed, base_shape));
        }
    }
}
