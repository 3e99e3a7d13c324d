//! The neuron-group network of the image tasks: a fully connected ReLU network whose hidden
//! layers are [`GroupedRelu`] layers, each hidden layer's `M` groups of neurons the modules of
//! which its gate selects `K` per image, then a dense linear classifier. It is what
//! `modula convert` makes of a trained dense ReLU network (the groups a partition of its
//! neurons, the gates its routers), and what EM trains from scratch for comparison.
//!
//! A controller-gated layer draws its `K` groups without repetition (a distinct controller:
//! top-K greedy, Plackett-Luce sampling). Under noisy top-k each selected group's output is
//! multiplied by `K` times its gate weight, so that equal gate weights leave the groups'
//! outputs as they are.

use modula_modular::{Controller, GroupedRelu, GroupedReluCache, Routing};
use modula_nn::{Ctx, Grads, Init, Linear, ParamStore};
use modula_tensor::Backend;
use rand::Rng;

use crate::config::Algo;
use crate::models::conv::modules_for;
use crate::models::feedforward::{ClassifiedCache, Gate, GatedLayer, classified_feed_forward};
use crate::models::topk::TopKGate;

/// One hidden layer of a [`GroupNet`]: its gate (reading the layer's input) and its groups.
#[derive(Clone, Debug)]
pub struct GroupLayer {
    /// Group selection.
    pub gate: Gate,
    /// The groups of neurons.
    pub groups: GroupedRelu,
}

/// Hidden layers of neuron groups and a linear classifier.
#[derive(Clone, Debug)]
pub struct GroupNet {
    /// The hidden layers, input first.
    pub layers: Vec<GroupLayer>,
    /// The classifier over the last hidden layer.
    pub classifier: Linear,
    /// Weight of the noisy top-k importance loss.
    pub importance_weight: f32,
}

/// What a [`GroupNet`]'s forward pass keeps for backward.
pub type GroupNetCache<B> = ClassifiedCache<B, GroupedReluCache<B>>;

impl GroupNet {
    /// Builds `d_in -> hidden... -> classes` with `(modules, k)` groups per hidden layer
    /// (every width a multiple of the groups, `1 <= k <= modules`) for `algo`: per layer `l` a
    /// distinct controller `g{l}.ctrl` (noisy top-k's gate `g{l}.gate` under `Algo::Topk`) and
    /// the groups `g{l}` (He-initialised), then the classifier `classifier` (Glorot).
    ///
    /// # Panics
    /// If a width is not a multiple of the groups, or `k` is outside `1..=modules`.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        d_in: usize,
        hidden: &[usize],
        classes: usize,
        shape: (usize, usize),
        algo: Algo,
        importance_weight: f32,
        rng: &mut impl Rng,
    ) -> Self {
        // One group (the whole layer) for the dense baseline, at least two slots for top-k.
        let (modules, k) = modules_for(algo, shape);
        let mut width_in = d_in;
        let layers = hidden
            .iter()
            .enumerate()
            .map(|(l, &width)| {
                assert!(
                    width.is_multiple_of(modules),
                    "hidden width {width} is not a multiple of {modules} groups"
                );
                let name = format!("g{l}");
                let gate = if algo == Algo::Topk {
                    Gate::TopK(TopKGate::new(
                        b,
                        params,
                        &format!("{name}.gate"),
                        width_in,
                        modules,
                        k,
                        rng,
                    ))
                } else {
                    Gate::Controller(Controller::distinct(
                        b,
                        params,
                        &format!("{name}.ctrl"),
                        width_in,
                        modules,
                        k,
                        rng,
                    ))
                };
                let groups =
                    GroupedRelu::new(b, params, &name, (modules, width / modules), width_in, rng);
                width_in = width;
                GroupLayer { gate, groups }
            })
            .collect();
        let classifier = Linear::new(
            b,
            params,
            "classifier",
            width_in,
            classes,
            Init::Glorot,
            rng,
        );
        GroupNet {
            layers,
            classifier,
            importance_weight,
        }
    }

    /// `(M, K)` of each hidden layer, in forward order.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.layers.iter().map(|l| l.gate.shape()).collect()
    }

    /// Floating-point operations of one image's forward pass: 2 per multiply-add of each
    /// layer's gate (a controller's `d_in x M` scores, or top-k's clean and noise ones) and
    /// its `K` selected groups' product, and of the classifier.
    pub fn flops_per_image(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let g = &l.groups;
                let (m, k) = l.gate.shape();
                let gate = match l.gate {
                    Gate::Controller(_) => g.d_in * m,
                    Gate::TopK(_) => 2 * g.d_in * m,
                };
                2 * (gate + k * g.d_in * g.width) as u64
            })
            .sum();
        layers + 2 * (self.classifier.d_in * self.classifier.d_out) as u64
    }
}

classified_feed_forward!(GroupNet, GroupNetCache);

impl<B: Backend> GatedLayer<B> for GroupLayer {
    type Cache = GroupedReluCache<B>;

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn forward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        h: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
        kept: Option<&mut Vec<B::Tensor>>,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, GroupedReluCache<B>) {
        // Top-k's gate weights sum to one over the K groups: scaled by K, equal weights leave
        // each group's output unchanged.
        let scaled = gates.map(|g| {
            let mut g = b.duplicate(g);
            b.scale(&mut g, routing.k() as f32);
            g
        });
        let (y, cache) = self.groups.forward(b, params, h, routing, scaled.as_ref());
        if let Some(kept) = kept {
            kept.push(b.duplicate(&y));
        }
        (y, cache)
    }

    fn backward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: GroupedReluCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        let (dx, dg) = self.groups.backward(b, params, routing, cache, dy, grads);
        let dg = dg.map(|mut g| {
            b.scale(&mut g, routing.k() as f32);
            g
        });
        (dx, dg)
    }
}
