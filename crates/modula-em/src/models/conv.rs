//! The modular convolutional network of the image tasks: modular 3x3 convolutions (each layer
//! a pool of `M` convolution modules of which `K` run per image, chosen by the layer's gate),
//! ReLU and 2x2 max pooling, then a dense linear classifier; with one module per layer, the
//! dense baselines.

use modula_modular::{ModularConv2d, ModularConvCache, Routing};
use modula_nn::{Ctx, Grads, Linear, MaxPool2d, Module, ParamStore};
use modula_tensor::{Backend, UnaryOp, Window2d};
use rand::Rng;

use crate::config::{Algo, DenseMatch};
use crate::models::feedforward::{ClassifiedCache, Gate, GatedLayer, classified_feed_forward};

/// One modular convolution layer of a [`ConvNet`].
#[derive(Clone, Debug)]
pub struct ConvLayer {
    /// Module selection, from the layer's flattened input image.
    pub gate: Gate,
    /// The convolution modules (3x3 by default, stride 1, padded to keep the image size).
    pub conv: ModularConv2d,
    /// The 2x2 max pooling after the ReLU (none once the image is a single pixel wide).
    pub pool: Option<MaxPool2d>,
}

/// A stack of modular convolutions (ReLU and max pooling after each) and a dense classifier.
#[derive(Clone, Debug)]
pub struct ConvNet {
    /// The convolution layers, input first.
    pub layers: Vec<ConvLayer>,
    /// The linear classifier over the last layer's flattened output.
    pub classifier: Linear,
    /// Weight of the noisy top-k importance loss.
    pub importance_weight: f32,
    /// The geometry it was built from.
    pub plan: ConvPlan,
}

/// The geometry of a [`ConvNet`] before it is built: its modules and slots per layer, each
/// layer's convolution window, output channels and pooling, and the classifier's input width.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvPlan {
    /// Modules per layer.
    pub modules: usize,
    /// Modules evaluated per image and layer.
    pub k: usize,
    /// Per layer: the convolution's window, its output channels and the pooling after it.
    pub layers: Vec<(Window2d, usize, Option<MaxPool2d>)>,
    /// Values per image entering the classifier.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Whether the gates are noisy top-k's (else controllers).
    pub topk: bool,
}

impl ConvPlan {
    /// The plan of `channels` output channels per layer over `input = [height, width,
    /// channels]` images with `kernel x kernel` convolutions (padded by `kernel / 2`), `modules`
    /// modules of which `k` run, and `classes` outputs.
    pub fn new(
        input: [usize; 3],
        channels: &[usize],
        kernel: usize,
        (modules, k): (usize, usize),
        classes: usize,
        topk: bool,
    ) -> Self {
        let [mut h, mut w, mut c] = input;
        let mut layers = Vec::with_capacity(channels.len());
        for &c_out in channels {
            let window = Window2d {
                height: h,
                width: w,
                channels: c,
                kernel_h: kernel,
                kernel_w: kernel,
                stride: 1,
                padding: kernel / 2,
            };
            let (oh, ow) = (window.out_height(), window.out_width());
            let pool = (oh >= 2 && ow >= 2).then(|| MaxPool2d::new(oh, ow, c_out, 2, 2));
            (h, w, c) = match &pool {
                Some(p) => p.out_dims(),
                None => (oh, ow, c_out),
            };
            layers.push((window, c_out, pool));
        }
        ConvPlan {
            modules,
            k,
            layers,
            features: h * w * c,
            classes,
            topk,
        }
    }

    /// Trainable scalars (saturating): per layer the modules' weights and biases and the
    /// gate's (a controller's `K` heads, or top-k's clean and noise projections), and the
    /// classifier's.
    pub fn parameters(&self) -> usize {
        let linear = |i: usize, o: usize| i.saturating_mul(o).saturating_add(o);
        let (m, k) = (self.modules, self.k);
        self.layers
            .iter()
            .map(|(window, c_out, _)| {
                let gate = if self.topk {
                    linear(window.in_len(), m).saturating_mul(2)
                } else {
                    linear(window.in_len(), k.saturating_mul(m))
                };
                linear(window.patch_len(), *c_out)
                    .saturating_mul(m)
                    .saturating_add(gate)
            })
            .fold(linear(self.features, self.classes), usize::saturating_add)
    }

    /// Floating-point operations of one image's forward pass: 2 per multiply-add of the gates'
    /// projections, the `K` evaluated modules' convolutions and the classifier (pooling and
    /// ReLU are not counted).
    pub fn flops_per_image(&self) -> u64 {
        let (m, k) = (self.modules as u64, self.k as u64);
        let layers: u64 = self
            .layers
            .iter()
            .map(|(window, c_out, _)| {
                let d_in = window.in_len() as u64;
                let gate = if self.topk {
                    2 * d_in * m
                } else {
                    d_in * k * m
                };
                let pixels = (window.out_height() * window.out_width()) as u64;
                2 * gate + 2 * k * pixels * window.patch_len() as u64 * *c_out as u64
            })
            .sum();
        layers + 2 * (self.features * self.classes) as u64
    }
}

/// The output channels of a dense baseline matched to `modular` in parameters: `channels`
/// scaled by the factor (on a grid of hundredths, from 1 to `2 M`) whose network's parameter
/// count is nearest the modular network's, each rounded to a whole channel.
pub fn params_matched_channels(
    modular: &ConvPlan,
    input: [usize; 3],
    channels: &[usize],
    kernel: usize,
) -> Vec<usize> {
    let target = modular.parameters();
    let scaled = |s: usize| -> Vec<usize> {
        channels
            .iter()
            .map(|&c| ((c * s) as f64 / 100.0).round().max(1.0) as usize)
            .collect()
    };
    let count = |ch: &[usize]| {
        ConvPlan::new(input, ch, kernel, (1, 1), modular.classes, false).parameters()
    };
    (100..=200 * modular.modules.max(1))
        .map(scaled)
        .min_by_key(|ch| count(ch).abs_diff(target))
        .expect("the grid is not empty")
}

/// What a [`ConvNet`]'s forward pass keeps for backward.
pub type ConvCache<B> = ClassifiedCache<B, BodyCache<B>>;

/// What a conv layer's body keeps: the convolution's cache, its output (the ReLU's input),
/// and the pooling's input.
type BodyCache<B> = (
    ModularConvCache<B>,
    <B as Backend>::Tensor,
    Option<<B as Backend>::Tensor>,
);

impl ConvNet {
    /// Builds the network of `plan` (its modules, slots, windows and pooling): each layer's
    /// gate (`{layer}.gate` for noisy top-k, `{layer}.ctrl` otherwise) reads the layer's
    /// flattened input, and the classifier (`classifier`) the last layer's flattened output.
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        plan: &ConvPlan,
        importance_weight: f32,
        rng: &mut impl Rng,
    ) -> Self {
        let algo = if plan.topk { Algo::Topk } else { Algo::Em };
        let layers = plan
            .layers
            .iter()
            .enumerate()
            .map(|(l, (window, c_out, pool))| ConvLayer {
                gate: Gate::new(
                    b,
                    params,
                    &format!("conv{l}"),
                    window.in_len(),
                    plan.modules,
                    plan.k,
                    algo,
                    rng,
                ),
                conv: ModularConv2d::new(
                    b,
                    params,
                    &format!("conv{l}.modules"),
                    plan.modules,
                    *window,
                    *c_out,
                    rng,
                ),
                pool: *pool,
            })
            .collect();
        let classifier = Linear::new(
            b,
            params,
            "classifier",
            plan.features,
            plan.classes,
            modula_nn::Init::Glorot,
            rng,
        );
        ConvNet {
            layers,
            classifier,
            importance_weight,
            plan: plan.clone(),
        }
    }

    /// `(M, K)` of each modular layer, in forward order.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.layers.iter().map(|l| l.gate.shape()).collect()
    }
}

classified_feed_forward!(ConvNet, ConvCache);

impl<B: Backend> GatedLayer<B> for ConvLayer {
    type Cache = BodyCache<B>;

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
        ctx: &mut Ctx,
    ) -> (B::Tensor, BodyCache<B>) {
        let (y, conv) = self.conv.forward(b, params, h, routing, gates);
        let a = b.unary(UnaryOp::Relu, &y);
        if let Some(kept) = kept {
            kept.push(b.duplicate(&a));
        }
        let (next, pool) = match &self.pool {
            Some(p) => {
                let (pooled, input) = p.forward(b, params, &a, ctx);
                (pooled, Some(input))
            }
            None => (a, None),
        };
        (next, (conv, y, pool))
    }

    fn backward_body(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        (conv, y, pool): BodyCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        let pooled_dy = match (&self.pool, pool) {
            (Some(p), Some(input)) => Some(p.backward(b, params, input, dy, grads)),
            _ => None,
        };
        // ReLU's slope is 1 exactly where its input is positive, which is also where its
        // output is, so the kept convolution output stands for both (no copy of the output).
        let dy = b.unary_backward(UnaryOp::Relu, &y, &y, pooled_dy.as_ref().unwrap_or(dy));
        self.conv.backward(b, params, routing, conv, &dy, grads)
    }
}

/// The modules and slots per layer a network for `algo` uses, given the configured `(M, K)`:
/// one module for a dense baseline, at least two slots for noisy top-k.
pub fn modules_for(algo: Algo, (modules, k): (usize, usize)) -> (usize, usize) {
    match algo {
        Algo::Dense => (1, 1),
        Algo::Topk => (modules, k.max(2).min(modules)),
        _ => (modules, k),
    }
}

/// The plan of the network `algo` trains: the modular network of `channels`, or for a dense
/// baseline one module per layer with the same channels (`DenseMatch::Compute`) or channels
/// widened to the modular network's parameter count (`DenseMatch::Params`).
#[allow(clippy::too_many_arguments)]
pub fn plan_for(
    input: [usize; 3],
    channels: &[usize],
    kernel: usize,
    shape: (usize, usize),
    classes: usize,
    algo: Algo,
    dense_match: DenseMatch,
) -> ConvPlan {
    let (modules, k) = modules_for(algo, shape);
    let topk = algo == Algo::Topk;
    match (algo, dense_match) {
        (Algo::Dense, DenseMatch::Params) => {
            let modular = ConvPlan::new(input, channels, kernel, shape, classes, false);
            let wide = params_matched_channels(&modular, input, channels, kernel);
            ConvPlan::new(input, &wide, kernel, (1, 1), classes, false)
        }
        _ => ConvPlan::new(input, channels, kernel, (modules, k), classes, topk),
    }
}
