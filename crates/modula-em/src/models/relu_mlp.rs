//! The fully connected ReLU network of the sparsity study: a linear first layer, then each
//! further layer a [`SparseLinear`] (the ReLU of the previous layer's pre-activation and a
//! linear map, whose products skip the ReLU's zeros when the batch is sparse enough), with
//! optional L1 penalties on the hidden activations and on the weights, and a group-sparsity
//! penalty over fixed blocks of neurons (the locality constraint of
//! `docs/experiments/modularity.md`).

use std::sync::atomic::{AtomicU64, Ordering};

use modula_nn::{
    Ctx, Dispatch, Grads, Init, Linear, Module, ParamId, ParamStore, SparseLinear,
    SparseLinearCache, l1_penalty, l1_penalty_backward,
};
use modula_sparse::SparseBackend;
use modula_tensor::{BackendError, ReduceOp, UnaryOp};
use rand::Rng;

use crate::model::{Router, Target};
use crate::models::feedforward::{FeedForward, LossCache, MlpOutput, output_loss};

/// How many of a network's [`SparseLinear`] forward passes took the sparse products.
#[derive(Debug, Default)]
struct PathCount {
    sparse: AtomicU64,
    all: AtomicU64,
}

impl Clone for PathCount {
    fn clone(&self) -> Self {
        PathCount {
            sparse: AtomicU64::new(self.sparse.load(Ordering::Relaxed)),
            all: AtomicU64::new(self.all.load(Ordering::Relaxed)),
        }
    }
}

/// A fully connected ReLU network `x -> z_1 -> relu -> z_2 -> ... -> logits`: the first
/// layer a [`Linear`], every later one a [`SparseLinear`] reading the previous
/// pre-activation.
#[derive(Clone, Debug)]
pub struct ReluMlp {
    /// The first layer, `d_in -> hidden[0]` (its input, the image, is not a ReLU output).
    pub first: Linear,
    /// The later layers, each `relu(z) W + b`, the last one producing the logits.
    pub layers: Vec<SparseLinear>,
    /// L1 strength on every hidden activation `relu(z)`, per example (0: none).
    pub l1_activations: f32,
    /// L1 strength on every weight matrix (0: none).
    pub l1_weights: f32,
    /// Group-sparsity strength over fixed blocks of `group_size` consecutive neurons of every
    /// hidden layer, per example: `lambda * sum_blocks ||relu(z)_block||_2` (0: none). Unlike
    /// L1, which silences single neurons, it pushes whole blocks to zero together, so that
    /// the next layer's product could skip them.
    pub l1_groups: f32,
    /// Neurons per block of the group penalty (it must divide every hidden width).
    pub group_size: usize,
    paths: PathCount,
}

/// What a [`ReluMlp`]'s forward pass keeps for backward.
pub struct ReluMlpCache<B: SparseBackend> {
    first: B::Tensor,
    layers: Vec<SparseLinearCache<B::Tensor>>,
    /// Each hidden layer's `relu(z)`, kept for the activation penalties' gradients (one copy
    /// for both penalties).
    penalised: Vec<B::Tensor>,
    /// Each hidden layer's group norms, one per (example, block), row-major (with the group
    /// penalty only).
    norms: Vec<Vec<f32>>,
    loss: LossCache<B>,
}

impl<B: SparseBackend> std::fmt::Debug for ReluMlpCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReluMlpCache")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl ReluMlp {
    /// Builds `d_in -> hidden... -> classes` (He-initialised layers where a ReLU follows,
    /// Glorot for the logits), every [`SparseLinear`] dispatching by `dispatch`: parameters
    /// `fc0`, `fc1`, ...
    ///
    /// # Panics
    /// If `hidden` is empty.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn new<B: SparseBackend>(
        b: &B,
        params: &mut ParamStore<B>,
        d_in: usize,
        hidden: &[usize],
        classes: usize,
        dispatch: Dispatch,
        (l1_activations, l1_weights): (f32, f32),
        rng: &mut impl Rng,
    ) -> Self {
        assert!(!hidden.is_empty(), "a ReLU network needs a hidden layer");
        let first = Linear::new(b, params, "fc0", d_in, hidden[0], Init::He, rng);
        let widths: Vec<usize> = hidden.iter().copied().chain([classes]).collect();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let init = if l + 2 < widths.len() {
                    Init::He
                } else {
                    Init::Glorot
                };
                SparseLinear::new(b, params, &format!("fc{}", l + 1), w[0], w[1], init, rng)
                    .with_dispatch(dispatch)
            })
            .collect();
        ReluMlp {
            first,
            layers,
            l1_activations,
            l1_weights,
            l1_groups: 0.0,
            group_size: 32,
            paths: PathCount::default(),
        }
    }

    /// The same network with the group penalty `lambda` over blocks of `size` neurons.
    ///
    /// # Panics
    /// If `size` is 0 or does not divide every hidden width, or `lambda` is negative.
    #[track_caller]
    pub fn with_group_penalty(self, lambda: f32, size: usize) -> Self {
        assert!(
            lambda >= 0.0,
            "the group penalty must be 0 or more, got {lambda}"
        );
        assert!(
            size > 0 && self.layers.iter().all(|l| l.d_in % size == 0),
            "blocks of {size} neurons must divide every hidden width"
        );
        ReluMlp {
            l1_groups: lambda,
            group_size: size,
            ..self
        }
    }

    /// The group penalty's norms of `relu(z)` `a [n, d]`: one per (example, block of
    /// `group_size` neurons), row-major.
    fn group_norms<B: SparseBackend>(
        &self,
        b: &B,
        a: &B::Tensor,
    ) -> Result<Vec<f32>, BackendError> {
        let [n, d] = b.shape(a);
        let blocks = b.reshape(
            b.unary(UnaryOp::Square, a),
            [n * d / self.group_size, self.group_size],
        );
        let squares = b.download(&b.reduce_rows(ReduceOp::Sum, &blocks))?;
        Ok(squares.iter().map(|&q| q.sqrt()).collect())
    }

    /// The group penalty's gradient with respect to `relu(z)`, given each example's weight
    /// `d_rows`: `d_rows[i] * lambda * a_ij / ||a_i,block(j)||`, zero in an all-zero block
    /// (the subgradient that keeps it at zero). Where `a` is zero so is the gradient, so it
    /// is also the gradient with respect to `z`.
    fn group_backward<B: SparseBackend>(
        &self,
        b: &B,
        a: &B::Tensor,
        norms: &[f32],
        d_rows: &[f32],
    ) -> B::Tensor {
        let [n, d] = b.shape(a);
        let per_row = d / self.group_size;
        let scale: Vec<f32> = norms
            .iter()
            .enumerate()
            .map(|(r, &norm)| {
                if norm > 0.0 {
                    d_rows[r / per_row] * self.l1_groups / norm
                } else {
                    0.0
                }
            })
            .collect();
        let mut blocks = b.reshape(b.duplicate(a), [n * per_row, self.group_size]);
        b.scale_rows(&mut blocks, &b.upload([n * per_row, 1], &scale));
        b.reshape(blocks, [n, d])
    }

    /// The same network (the same parameters) with another [`Dispatch`], for timing the
    /// sparse products against the dense ones on the same weights.
    pub fn with_dispatch(&self, dispatch: Dispatch) -> Self {
        ReluMlp {
            layers: self
                .layers
                .iter()
                .map(|l| l.clone().with_dispatch(dispatch))
                .collect(),
            paths: PathCount::default(),
            ..self.clone()
        }
    }

    /// The forward passes of the [`SparseLinear`] layers since the last call, and how many of
    /// them took the sparse products (each also decides its backward's products).
    pub fn take_path_counts(&self) -> (u64, u64) {
        (
            self.paths.sparse.swap(0, Ordering::Relaxed),
            self.paths.all.swap(0, Ordering::Relaxed),
        )
    }

    /// The weight matrices the weight penalty applies to.
    fn weights(&self) -> Vec<ParamId> {
        std::iter::once(self.first.weight)
            .chain(self.layers.iter().map(|l| l.weight))
            .collect()
    }

    /// Floating-point operations of one example's forward pass with every product dense:
    /// 2 per multiply-add.
    pub fn flops_per_example(&self) -> u64 {
        let first = (self.first.d_in * self.first.d_out) as u64;
        let rest: u64 = self.layers.iter().map(|l| (l.d_in * l.d_out) as u64).sum();
        2 * (first + rest)
    }

    /// The share of an ideal sparse implementation's products saved, forward and backward,
    /// when the input of each [`SparseLinear`] has the given `density` (non-zeros per element,
    /// in layer order): every product with a layer's input (its forward, its weight gradient
    /// and its input gradient at the pattern) costs `density` times the dense one; the first
    /// layer, whose input is the image, saves nothing.
    ///
    /// # Panics
    /// If `density` has another length than the layers.
    #[track_caller]
    pub fn ideal_saving(&self, density: &[f64]) -> f64 {
        assert_eq!(density.len(), self.layers.len(), "one density per layer");
        let first = (self.first.d_in * self.first.d_out) as f64;
        let (mut dense, mut sparse) = (first, first);
        for (l, d) in self.layers.iter().zip(density) {
            let size = (l.d_in * l.d_out) as f64;
            dense += size;
            sparse += size * d;
        }
        1.0 - sparse / dense
    }
}

impl<B: SparseBackend> FeedForward<B> for ReluMlp {
    type Cache = ReluMlpCache<B>;

    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        Vec::new()
    }

    fn forward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        target: &Target<B>,
        _route: &mut Router<'_, B>,
        _stats: bool,
        hidden: bool,
        ctx: &mut Ctx,
    ) -> Result<MlpOutput<B, ReluMlpCache<B>>, BackendError> {
        let n = b.shape(x)[0];
        let (mut z, first) = self.first.forward(b, params, x, ctx);
        let mut layers = Vec::with_capacity(self.layers.len());
        let (mut penalised, mut norms, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        let mut penalty = 0.0;
        for layer in &self.layers {
            if self.l1_activations > 0.0 || self.l1_groups > 0.0 || hidden {
                let a = b.unary(UnaryOp::Relu, &z);
                if self.l1_activations > 0.0 {
                    let rows = b.download(&l1_penalty(b, &a, self.l1_activations))?;
                    penalty += rows.iter().map(|&v| v as f64).sum::<f64>() / n.max(1) as f64;
                }
                if self.l1_groups > 0.0 {
                    let layer_norms = self.group_norms(b, &a)?;
                    let sum: f64 = layer_norms.iter().map(|&v| v as f64).sum();
                    penalty += self.l1_groups as f64 * sum / n.max(1) as f64;
                    norms.push(layer_norms);
                }
                if self.l1_activations > 0.0 || self.l1_groups > 0.0 {
                    penalised.push(b.duplicate(&a));
                }
                if hidden {
                    kept.push(a);
                }
            }
            let (next, cache) = layer.forward(b, params, &z, ctx);
            self.paths
                .sparse
                .fetch_add(u64::from(cache.is_sparse()), Ordering::Relaxed);
            self.paths.all.fetch_add(1, Ordering::Relaxed);
            layers.push(cache);
            z = next;
        }
        // The weights' penalty is a training term only: an evaluation's pass (which has no
        // backward pass) would spend a pass over every weight on a figure nobody reads.
        if self.l1_weights > 0.0 && ctx.train {
            for id in self.weights() {
                let rows = b.download(&l1_penalty(b, params.get(id), self.l1_weights))?;
                penalty += rows.iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        let (task_nll, loss) = output_loss(b, &z, target);
        Ok(MlpOutput {
            task_nll,
            ctrl_logp: b.zeros([n, 1]),
            selections: Vec::new(),
            prediction: z,
            stats: None,
            penalty,
            hidden: kept,
            cache: ReluMlpCache {
                first,
                layers,
                penalised,
                norms,
                loss,
            },
        })
    }

    fn backward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: ReluMlpCache<B>,
        d_task: &B::Tensor,
        _d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        let mut dz = cache.loss.backward(b, d_task);
        let mut penalised = cache.penalised;
        let mut norms = cache.norms;
        let d_rows = if norms.is_empty() {
            Vec::new()
        } else {
            b.download(d_task)?
        };
        for (layer, c) in self.layers.iter().zip(cache.layers).rev() {
            dz = layer.backward(b, params, c, &dz, grads);
            let a = penalised.pop();
            if let (Some(a), Some(layer_norms)) = (&a, norms.pop()) {
                b.axpy(
                    1.0,
                    &self.group_backward(b, a, &layer_norms, &d_rows),
                    &mut dz,
                );
            }
            // `relu(z)`'s penalty: lambda where z > 0 (the ReLU's slope), zero elsewhere.
            if let Some(a) = a.filter(|_| self.l1_activations > 0.0) {
                b.axpy(
                    1.0,
                    &l1_penalty_backward(b, &a, d_task, self.l1_activations),
                    &mut dz,
                );
            }
        }
        self.first.backward(b, params, cache.first, &dz, grads);
        if self.l1_weights > 0.0 {
            // Every row carries the weights' penalty, so its weight is the sum of the rows'.
            let total: f32 = b.download(d_task)?.iter().sum();
            for id in self.weights() {
                let [rows, _] = b.shape(params.get(id));
                let mut d_penalty = b.zeros([rows, 1]);
                b.fill(&mut d_penalty, total);
                let g = l1_penalty_backward(b, params.get(id), &d_penalty, self.l1_weights);
                grads.accumulate(b, id, &g);
            }
        }
        Ok(())
    }
}
