//! The networks of the image tasks, chosen by the `[model]` section: the modular convolutional
//! network ([`ConvNet`]) that EM and the baselines train, the fully connected ReLU network
//! of the sparsity study ([`ReluMlp`]), trained dense, or the network of neuron groups
//! ([`GroupNet`]) that `modula convert` makes of a trained ReLU network.

use modula_nn::{Ctx, Dispatch, Grads, ParamStore};
use modula_sparse::SparseBackend;
use modula_tensor::BackendError;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Algo, ConfigError, DenseMatch, invalid};
use crate::model::{Router, Target};
use crate::models::conv::modules_for;
use crate::models::conv::{ConvCache, ConvNet, ConvPlan, plan_for};
use crate::models::feedforward::{FeedForward, MlpOutput, feed_forward_model};
use crate::models::groups::{GroupNet, GroupNetCache};
use crate::models::relu_mlp::{ReluMlp, ReluMlpCache};

/// Which network an image task trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageNet {
    /// The modular convolutional network.
    #[default]
    Conv,
    /// The fully connected ReLU network (dense training only).
    Mlp,
    /// The fully connected network whose hidden layers are groups of neurons, `K` of `M`
    /// computed per image.
    Groups,
}

/// The `[model]` section of an image task. `kind = "conv"` reads `modules`, `k`, `channels`
/// and `kernel`; `kind = "mlp"` reads `hidden`, `l1_activations`, `l1_weights`, `l1_groups`,
/// `l1_group_size` and `sparse_dispatch`; `kind = "groups"` reads `modules` (groups per hidden layer), `k` and
/// `hidden`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageModelConfig {
    /// The network.
    pub kind: ImageNet,
    /// Conv: modules per modular layer, `M`; groups: groups per hidden layer.
    pub modules: usize,
    /// Conv: modules evaluated per image and layer, `K`; groups: groups computed.
    pub k: usize,
    /// Conv: output channels of each modular convolution layer, input first.
    pub channels: Vec<usize>,
    /// Conv: the convolutions' kernel size (odd; padded by `kernel / 2`, stride 1).
    pub kernel: usize,
    /// MLP and groups: the hidden layers' widths.
    pub hidden: Vec<usize>,
    /// MLP: L1 strength on the hidden activations, per example (`lambda * sum |relu(z)|`).
    pub l1_activations: f32,
    /// MLP: L1 strength on the weight matrices (`lambda * sum |W|`).
    pub l1_weights: f32,
    /// MLP: group-sparsity strength over fixed blocks of `l1_group_size` consecutive neurons
    /// of every hidden layer, per example (`lambda * sum_blocks ||relu(z)_block||_2`): the
    /// locality constraint, which silences whole blocks together (0: off).
    pub l1_groups: f32,
    /// MLP: neurons per block of `l1_groups` (it must divide every hidden width).
    pub l1_group_size: usize,
    /// MLP: whether the hidden layers' products may take the sparse path (dispatching on the
    /// batch's measured density); off, they are always dense.
    pub sparse_dispatch: bool,
}

impl Default for ImageModelConfig {
    fn default() -> Self {
        ImageModelConfig {
            kind: ImageNet::Conv,
            modules: 5,
            k: 1,
            channels: vec![32, 64, 64],
            kernel: 3,
            hidden: vec![1024, 1024],
            l1_activations: 0.0,
            l1_weights: 0.0,
            l1_groups: 0.0,
            l1_group_size: 32,
            sparse_dispatch: true,
        }
    }
}

impl ImageModelConfig {
    /// The convolutional network's plan for `algo` on `[height, width, channels]` images with
    /// `classes` classes.
    pub fn conv_plan(
        &self,
        input: [usize; 3],
        classes: usize,
        algo: Algo,
        dense_match: DenseMatch,
    ) -> ConvPlan {
        plan_for(
            input,
            &self.channels,
            self.kernel,
            (self.modules, self.k),
            classes,
            algo,
            dense_match,
        )
    }

    /// Trainable scalars of the network [`ImageModel::new`] builds, counted without building
    /// it (saturating).
    pub fn parameters(
        &self,
        input: [usize; 3],
        classes: usize,
        algo: Algo,
        dense_match: DenseMatch,
    ) -> usize {
        match self.kind {
            ImageNet::Conv => self
                .conv_plan(input, classes, algo, dense_match)
                .parameters(),
            ImageNet::Mlp | ImageNet::Groups => {
                let d_in = input.iter().product::<usize>();
                let dense = std::iter::once(d_in)
                    .chain(self.hidden.iter().copied())
                    .chain([classes])
                    .collect::<Vec<_>>()
                    .windows(2)
                    .map(|w| w[0].saturating_mul(w[1]).saturating_add(w[1]))
                    .fold(0, usize::saturating_add);
                if self.kind == ImageNet::Mlp {
                    return dense;
                }
                // Each layer's gate: a distinct controller's `d_in x M` scores, or top-k's
                // clean and noise ones.
                let (m, _) = modules_for(algo, (self.modules, self.k));
                let heads = if algo == Algo::Topk { 2 } else { 1 };
                std::iter::once(d_in)
                    .chain(self.hidden.iter().copied())
                    .take(self.hidden.len())
                    .map(|d| d.saturating_add(1).saturating_mul(m).saturating_mul(heads))
                    .fold(dense, usize::saturating_add)
            }
        }
    }

    /// The widest row a forward pass holds per example, in floats, summed over the layers
    /// (inputs, outputs, convolution patches and ReLU copies): what the memory estimate
    /// multiplies by the rows in flight.
    pub fn floats_per_example(
        &self,
        input: [usize; 3],
        classes: usize,
        algo: Algo,
        dense_match: DenseMatch,
    ) -> usize {
        match self.kind {
            ImageNet::Conv => {
                let plan = self.conv_plan(input, classes, algo, dense_match);
                let layers: usize = plan
                    .layers
                    .iter()
                    .map(|(window, c_out, _)| {
                        let pixels = window.out_height() * window.out_width();
                        // The input and its copy for the gate, the patches of each routed
                        // module, the module outputs, the sum, its ReLU and their copies.
                        2 * window.in_len()
                            + plan.k * pixels * (window.patch_len() + *c_out)
                            + 4 * pixels * *c_out
                    })
                    .sum();
                layers + 4 * classes
            }
            ImageNet::Mlp | ImageNet::Groups => {
                let d_in: usize = input.iter().product();
                // A penalty on the activations keeps one more copy of every hidden layer.
                let penalised = self.kind == ImageNet::Mlp
                    && (self.l1_activations > 0.0 || self.l1_groups > 0.0);
                let hidden = (4 + usize::from(penalised)) * self.hidden.iter().sum::<usize>();
                2 * d_in + hidden + 4 * classes
            }
        }
    }

    /// Checks every field the kind reads, and that the kind can be trained by `algo`, naming
    /// the first bad field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self, algo: Algo) -> Result<(), ConfigError> {
        match self.kind {
            ImageNet::Conv => {
                if self.modules == 0 || self.modules > u16::MAX as usize {
                    return Err(invalid(
                        "model.modules",
                        format!("is {}; use 1 to {}", self.modules, u16::MAX),
                    ));
                }
                if self.k == 0 || self.k > self.modules {
                    return Err(invalid(
                        "model.k",
                        format!(
                            "is {} with model.modules = {}; use 1 to M modules per image",
                            self.k, self.modules
                        ),
                    ));
                }
                if self.channels.is_empty() || self.channels.contains(&0) {
                    return Err(invalid(
                        "model.channels",
                        format!(
                            "is {:?}; list at least one layer's positive channel count, e.g. [32, 64, 64]",
                            self.channels
                        ),
                    ));
                }
                if self.kernel.is_multiple_of(2) {
                    return Err(invalid(
                        "model.kernel",
                        format!(
                            "is {}; use an odd size (3 by default), which padding keeps centred",
                            self.kernel
                        ),
                    ));
                }
            }
            ImageNet::Mlp => {
                if self.hidden.is_empty() || self.hidden.contains(&0) {
                    return Err(invalid(
                        "model.hidden",
                        format!(
                            "is {:?}; list at least one positive hidden width, e.g. [1024, 1024]",
                            self.hidden
                        ),
                    ));
                }
                for (field, v) in [
                    ("model.l1_activations", self.l1_activations),
                    ("model.l1_weights", self.l1_weights),
                    ("model.l1_groups", self.l1_groups),
                ] {
                    if !(v >= 0.0 && v.is_finite()) {
                        return Err(invalid(field, format!("is {v}; use 0 (off) or more")));
                    }
                }
                let size = self.l1_group_size;
                if self.l1_groups > 0.0 && (size == 0 || self.hidden.iter().any(|h| h % size != 0))
                {
                    return Err(invalid(
                        "model.l1_group_size",
                        format!(
                            "is {size}; the blocks of model.l1_groups must divide every hidden width {:?} (32 by default)",
                            self.hidden
                        ),
                    ));
                }
                if algo != Algo::Dense {
                    return Err(invalid(
                        "model.kind",
                        format!(
                            "is \"mlp\", a network without modular layers, which train.algo = \"{}\" cannot route; use train.algo = \"dense\", or kind = \"conv\"",
                            algo.name()
                        ),
                    ));
                }
            }
            ImageNet::Groups => {
                if self.modules == 0 || self.modules > u16::MAX as usize {
                    return Err(invalid(
                        "model.modules",
                        format!(
                            "is {}; use 1 to {} groups per hidden layer",
                            self.modules,
                            u16::MAX
                        ),
                    ));
                }
                if self.k == 0 || self.k > self.modules {
                    return Err(invalid(
                        "model.k",
                        format!(
                            "is {} with model.modules = {}; use 1 to M groups per image",
                            self.k, self.modules
                        ),
                    ));
                }
                if let Some(&w) = self
                    .hidden
                    .iter()
                    .find(|&&w| w == 0 || !w.is_multiple_of(self.modules))
                {
                    return Err(invalid(
                        "model.hidden",
                        format!(
                            "holds {w}, which is not a positive multiple of model.modules = {}; every hidden layer splits into M equal groups",
                            self.modules
                        ),
                    ));
                }
                if self.hidden.is_empty() {
                    return Err(invalid(
                        "model.hidden",
                        "is empty; list at least one hidden width, e.g. [1024, 1024]",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The network of an image task.
#[derive(Clone, Debug)]
pub enum ImageModel {
    /// The modular convolutional network (or its dense baselines).
    Conv(ConvNet),
    /// The fully connected ReLU network.
    Mlp(ReluMlp),
    /// The network of neuron groups.
    Groups(GroupNet),
}

/// What an [`ImageModel`]'s forward pass keeps for backward.
#[derive(Debug)]
pub enum ImageCache<B: SparseBackend> {
    /// The convolutional network's.
    Conv(ConvCache<B>),
    /// The ReLU network's.
    Mlp(ReluMlpCache<B>),
    /// The group network's.
    Groups(GroupNetCache<B>),
}

impl ImageModel {
    /// Builds the network `model` configures for `algo` over `[height, width, channels]`
    /// images of `classes` classes (a valid configuration).
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: SparseBackend>(
        b: &B,
        params: &mut ParamStore<B>,
        input: [usize; 3],
        classes: usize,
        model: &ImageModelConfig,
        algo: Algo,
        dense_match: DenseMatch,
        importance_weight: f32,
        rng: &mut impl Rng,
    ) -> Self {
        match model.kind {
            ImageNet::Conv => {
                let plan = model.conv_plan(input, classes, algo, dense_match);
                ImageModel::Conv(ConvNet::new(b, params, &plan, importance_weight, rng))
            }
            ImageNet::Mlp => {
                let dispatch = if model.sparse_dispatch {
                    Dispatch::Auto
                } else {
                    Dispatch::Dense
                };
                let net = ReluMlp::new(
                    b,
                    params,
                    input.iter().product(),
                    &model.hidden,
                    classes,
                    dispatch,
                    (model.l1_activations, model.l1_weights),
                    rng,
                );
                ImageModel::Mlp(if model.l1_groups > 0.0 {
                    net.with_group_penalty(model.l1_groups, model.l1_group_size)
                } else {
                    net
                })
            }
            ImageNet::Groups => ImageModel::Groups(GroupNet::new(
                b,
                params,
                input.iter().product(),
                &model.hidden,
                classes,
                (model.modules, model.k),
                algo,
                importance_weight,
                rng,
            )),
        }
    }

    /// Floating-point operations of one image's forward pass (2 per multiply-add of the
    /// products, every product counted dense).
    pub fn flops_per_image(&self) -> u64 {
        match self {
            ImageModel::Conv(n) => n.plan.flops_per_image(),
            ImageModel::Mlp(n) => n.flops_per_example(),
            ImageModel::Groups(n) => n.flops_per_image(),
        }
    }

    /// `(M, K)` of each modular layer, in forward order (none for the ReLU network).
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        match self {
            ImageModel::Conv(n) => n.layer_shapes(),
            ImageModel::Mlp(_) => Vec::new(),
            ImageModel::Groups(n) => n.layer_shapes(),
        }
    }
}

impl<B: SparseBackend> FeedForward<B> for ImageModel {
    type Cache = ImageCache<B>;

    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        ImageModel::layer_shapes(self)
    }

    fn forward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        target: &Target<B>,
        route: &mut Router<'_, B>,
        stats: bool,
        hidden: bool,
        ctx: &mut Ctx,
    ) -> Result<MlpOutput<B, ImageCache<B>>, BackendError> {
        fn wrap<B: SparseBackend, C>(
            out: MlpOutput<B, C>,
            cache: impl FnOnce(C) -> ImageCache<B>,
        ) -> MlpOutput<B, ImageCache<B>> {
            MlpOutput {
                task_nll: out.task_nll,
                ctrl_logp: out.ctrl_logp,
                selections: out.selections,
                prediction: out.prediction,
                stats: out.stats,
                penalty: out.penalty,
                hidden: out.hidden,
                cache: cache(out.cache),
            }
        }
        Ok(match self {
            ImageModel::Conv(n) => wrap(
                n.forward_tensors(b, params, x, target, route, stats, hidden, ctx)?,
                ImageCache::Conv,
            ),
            ImageModel::Mlp(n) => wrap(
                n.forward_tensors(b, params, x, target, route, stats, hidden, ctx)?,
                ImageCache::Mlp,
            ),
            ImageModel::Groups(n) => wrap(
                n.forward_tensors(b, params, x, target, route, stats, hidden, ctx)?,
                ImageCache::Groups,
            ),
        })
    }

    fn backward_tensors(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: ImageCache<B>,
        d_task: &B::Tensor,
        d_ctrl: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(), BackendError> {
        match (self, cache) {
            (ImageModel::Conv(n), ImageCache::Conv(c)) => {
                n.backward_tensors(b, params, c, d_task, d_ctrl, grads)
            }
            (ImageModel::Mlp(n), ImageCache::Mlp(c)) => {
                n.backward_tensors(b, params, c, d_task, d_ctrl, grads)
            }
            (ImageModel::Groups(n), ImageCache::Groups(c)) => {
                n.backward_tensors(b, params, c, d_task, d_ctrl, grads)
            }
            _ => unreachable!("a network's cache always matches the network"),
        }
    }
}

feed_forward_model!(ImageModel, SparseBackend);
