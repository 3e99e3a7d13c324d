//! `modula modularity`: does a trained dense ReLU network hold modules of its own? For each
//! hidden layer of an image run's fully connected network, the co-activation counts over the
//! training set, balanced partitions of its neurons into `M` groups (METIS on the
//! co-activation graph, balanced k-means on the weights, random), and on the test set: the
//! groups left without an active neuron per image, the accuracy when those groups' products
//! are skipped exactly (by the block-sparse engine: it must equal the dense accuracy), and the
//! accuracy when a linear router trained on the training set picks `K` groups per image and
//! only they are computed.

use std::path::{Path, PathBuf};

use modula_cluster::{CoActivation, GroupedProduct, Method, Partition};
use modula_data::Dataset;
use modula_em::models::{ImageModel, ReluMlp};
use modula_nn::{Adam, Ctx, Grads, Init, Linear, Module, Optimizer, ParamStore};
use modula_sparse::SparseBackend;
use modula_tasks::ImageData;
use modula_tensor::{BackendError, BinaryOp, Transpose, UnaryOp};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::RunConfig;
use crate::converted::{ConvertedResult, converted_results, converted_table};
use crate::dir::SUMMARY_FILE;
use crate::dir::{DeviceInfo, RunDir, read_checkpoint, read_run_config};
use crate::error::{RunError, run_error};
use crate::files::{self, write_report};
use crate::images::{ImageJob, device_error, images, load_data};
use crate::{console, memory};

/// Images per forward pass of the analysis.
const CHUNK: usize = 500;
/// Images per step of the routers' training.
const ROUTER_BATCH: usize = 256;
/// The routers' Adam learning rate.
const ROUTER_LR: f32 = 1e-3;

/// What `modula modularity` does.
#[derive(Clone, Debug)]
pub struct ModularityOptions {
    /// Groups per hidden layer, `M` (must divide every hidden width).
    pub groups: usize,
    /// The partition methods compared.
    pub methods: Vec<Method>,
    /// Seeds the partitions and the routers.
    pub seed: u64,
    /// Training images whose activations are counted and train the routers (0: all).
    pub train_examples: usize,
    /// Passes over those images to train the routers.
    pub router_epochs: usize,
    /// Shares of the groups the routed evaluation computes (`K = round(share * M)`, at least 1).
    pub k_shares: Vec<f64>,
    /// Where report.md and the figures go.
    pub out: PathBuf,
    /// Where results.json goes, if anywhere.
    pub json: Option<PathBuf>,
    /// Converted runs (`modula convert`) and networks of groups trained from scratch,
    /// tabulated against the dense runs analysed.
    pub converted: Vec<PathBuf>,
}

/// What `modula modularity` writes to results.json.
#[derive(Clone, Debug, Serialize)]
pub struct ModularityResults {
    /// The analysis of each dense run.
    pub runs: Vec<RunModularity>,
    /// The converted and scratch networks of groups, against the dense runs.
    pub converted: Vec<ConvertedResult>,
}

/// One hidden layer under one partition method, on the test set.
#[derive(Clone, Debug, Serialize)]
pub struct LayerGroups {
    /// The hidden layer, from 1.
    pub layer: usize,
    /// The share of the co-activation mass between distinct neurons inside the groups (a
    /// random partition: about `(s - 1) / (width - 1)`).
    pub within_fraction: f64,
    /// Mean over test images of the fraction of groups without an active neuron.
    pub inactive_mean: f64,
    /// That fraction's minimum, 10th, 50th and 90th percentile and maximum over test images.
    pub inactive_quantiles: [f64; 5],
    /// Test images by how many groups they leave inactive (index 0 to `M`).
    pub inactive_histogram: Vec<u64>,
    /// The share of the layer's FLOPs (its input product and the next product) that an exact
    /// skip saves: only the next product of inactive groups, since a group's activity is only
    /// known once its input product is computed.
    pub exact_layer_flops_saved: f64,
    /// How well the router predicts the active groups on the test set: the share of truly
    /// active groups among its top `K` at the largest `K` evaluated (recall at `K`).
    pub router_recall: f64,
}

/// Routed evaluation at one `K`.
#[derive(Clone, Debug, Serialize)]
pub struct Routed {
    /// Groups computed per hidden layer and image.
    pub k: usize,
    /// `K / M`: the share of each hidden layer's FLOPs (both products next to its neurons)
    /// computed.
    pub k_share: f64,
    /// Test accuracy with every hidden layer routed.
    pub test_accuracy: f64,
    /// The dense network's accuracy minus this one.
    pub accuracy_lost: f64,
    /// FLOPs of the routed forward (the routers' included) over the dense forward's.
    pub network_flops_share: f64,
}

/// One partition method on one run.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    /// The method.
    pub method: String,
    /// Per hidden layer.
    pub layers: Vec<LayerGroups>,
    /// Test accuracy with every hidden layer's inactive groups skipped in the next product.
    pub exact_skip_accuracy: f64,
    /// Whether every test image's logits under the exact skip are bit-identical to the grouped
    /// product's without skipping.
    pub exact_skip_identical: bool,
    /// The largest difference between the exact skip's logits and the plain dense forward's
    /// (the grouped product sums in another order).
    pub exact_skip_max_abs_diff: f64,
    /// Routed evaluation at each `K`.
    pub routed: Vec<Routed>,
}

/// `modula modularity` on one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunModularity {
    /// The run directory.
    pub run: String,
    /// The run's seed.
    pub run_seed: u64,
    /// The partitions' and routers' seed.
    pub seed: u64,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Groups per hidden layer, `M`.
    pub groups: usize,
    /// Training images counted and routed on.
    pub train_examples: usize,
    /// Test images evaluated.
    pub test_examples: usize,
    /// Passes of the routers' training.
    pub router_epochs: usize,
    /// Per hidden layer, the fraction of test activations that are `> 0`.
    pub active_fraction: Vec<f64>,
    /// Test accuracy of the dense forward.
    pub dense_test_accuracy: f64,
    /// Per partition method.
    pub methods: Vec<MethodResult>,
    /// The backend and thread count.
    #[serde(flatten)]
    pub device: DeviceInfo,
}

/// The dense network's pieces the analysis uses: its hidden layers' input products and the
/// products that follow them, as `(weight [d_in, d_out], bias [1, d_out])`.
pub(crate) struct Layers<'a, B: SparseBackend> {
    pub(crate) net: &'a ReluMlp,
    pub(crate) params: &'a ParamStore<B>,
}

impl<B: SparseBackend> Layers<'_, B> {
    /// The hidden layers' widths.
    pub(crate) fn hidden(&self) -> Vec<usize> {
        std::iter::once(self.net.first.d_out)
            .chain(self.net.layers.iter().map(|l| l.d_out))
            .take(self.net.layers.len())
            .collect()
    }

    /// The input width of each hidden layer (the image's for the first).
    pub(crate) fn inputs(&self) -> Vec<usize> {
        let hidden = self.hidden();
        std::iter::once(self.net.first.d_in)
            .chain(hidden.iter().copied())
            .take(hidden.len())
            .collect()
    }

    /// The weight of the product into hidden layer `l`'s neurons (`[d_in, width]`).
    pub(crate) fn input_weight(&self, l: usize) -> &B::Tensor {
        match l {
            0 => self.params.get(self.net.first.weight),
            _ => self.params.get(self.net.layers[l - 1].weight),
        }
    }

    /// The product after hidden layer `l` (weight and bias).
    fn next(&self, l: usize) -> (&B::Tensor, &B::Tensor) {
        let layer = &self.net.layers[l];
        (self.params.get(layer.weight), self.params.get(layer.bias))
    }

    /// `relu(z_0)`, the first hidden layer's activations, for `x`.
    fn first(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        let (z, _) = self.net.first.forward(b, self.params, x, &mut Ctx::eval());
        b.unary(UnaryOp::Relu, &z)
    }
}

/// `a W + bias` by the dense GEMM.
fn dense_product<B: SparseBackend>(
    b: &B,
    a: &B::Tensor,
    w: &B::Tensor,
    bias: &B::Tensor,
) -> B::Tensor {
    let n = b.shape(a)[0];
    let mut y = b.zeros([n, b.shape(w)[1]]);
    b.matmul(1.0, a, Transpose::No, w, Transpose::No, 0.0, &mut y);
    b.add_row(&mut y, bias);
    y
}

/// How a forward pass computes each hidden layer.
enum Compute<'a, B: SparseBackend> {
    /// Every product dense; the hidden activations are kept.
    Dense,
    /// The product after each hidden layer by the block-sparse engine over its groups, with or
    /// without skipping the inactive ones.
    Grouped(&'a [GroupedProduct<B>], bool),
    /// Only the `k` groups each layer's router scores highest are computed.
    Routed(&'a Routers<B>, usize),
}

/// A forward pass: the logits, and each hidden layer's input and activations (`Dense` only).
struct Pass<B: SparseBackend> {
    logits: Vec<f32>,
    inputs: Vec<B::Tensor>,
    hidden: Vec<B::Tensor>,
}

fn forward<B: SparseBackend>(
    b: &B,
    layers: &Layers<'_, B>,
    x: &B::Tensor,
    compute: &Compute<'_, B>,
) -> Result<Pass<B>, BackendError> {
    let (mut inputs, mut hidden) = (Vec::new(), Vec::new());
    let mut input = b.duplicate(x);
    let mut a = layers.first(b, x);
    let count = layers.net.layers.len();
    for l in 0..count {
        if let Compute::Routed(routers, k) = compute {
            let mask = routers.mask(b, l, &input, *k)?;
            a = b.binary(BinaryOp::Mul, &a, &mask);
        }
        let (w, bias) = layers.next(l);
        let z = match compute {
            Compute::Grouped(products, skip) => products[l].forward(b, &a, *skip)?.output,
            _ => dense_product(b, &a, w, bias),
        };
        if matches!(compute, Compute::Dense) {
            inputs.push(input);
            hidden.push(b.duplicate(&a));
        }
        input = a;
        a = if l + 1 < count {
            b.unary(UnaryOp::Relu, &z)
        } else {
            z
        };
    }
    Ok(Pass {
        logits: b.download(&a)?,
        inputs,
        hidden,
    })
}

/// Linear routers, one per hidden layer: each reads the layer's input and scores its groups,
/// trained to predict which groups hold an active neuron.
pub(crate) struct Routers<B: SparseBackend> {
    pub(crate) params: ParamStore<B>,
    pub(crate) linears: Vec<Linear>,
    pub(crate) partitions: Vec<Partition>,
}

impl<B: SparseBackend> Routers<B> {
    fn new(b: &B, inputs: &[usize], partitions: Vec<Partition>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamStore::new();
        let linears = inputs
            .iter()
            .zip(&partitions)
            .enumerate()
            .map(|(l, (&d, p))| {
                Linear::new(
                    b,
                    &mut params,
                    &format!("router{l}"),
                    d,
                    p.groups(),
                    Init::Glorot,
                    &mut rng,
                )
            })
            .collect();
        Routers {
            params,
            linears,
            partitions,
        }
    }

    /// Each group's activity (1 or 0) in `a`, the activations of layer `l` (`[n, width]`).
    fn targets(&self, l: usize, a: &[f32]) -> Vec<f32> {
        let p = &self.partitions[l];
        a.chunks(p.width())
            .flat_map(|row| p.active_groups(row).into_iter().map(f32::from))
            .collect()
    }

    /// One Adam step of every router on a batch: inputs and activations of each layer; the
    /// loss is the mean over rows of the summed logistic losses of the groups.
    fn step(
        &mut self,
        b: &B,
        adam: &mut Adam<B>,
        grads: &mut Grads<B>,
        pass: &Pass<B>,
    ) -> Result<(), BackendError> {
        grads.reset();
        for l in 0..self.linears.len() {
            let targets = self.targets(l, &b.download(&pass.hidden[l])?);
            let linear = &self.linears[l];
            let (logits, cache) =
                linear.forward(b, &self.params, &pass.inputs[l], &mut Ctx::eval());
            let n = b.shape(&logits)[0].max(1) as f32;
            let d: Vec<f32> = b
                .download(&logits)?
                .iter()
                .zip(&targets)
                .map(|(&s, &t)| (1.0 / (1.0 + (-s).exp()) - t) / n)
                .collect();
            let d = b.upload(b.shape(&logits), &d);
            linear.backward(b, &self.params, cache, &d, grads);
        }
        adam.step(b, &mut self.params, grads);
        Ok(())
    }

    /// Router `l`'s scores of its groups for `input`, `[n, M]` on the host.
    fn scores(&self, b: &B, l: usize, input: &B::Tensor) -> Result<Vec<f32>, BackendError> {
        let (s, _) = self.linears[l].forward(b, &self.params, input, &mut Ctx::eval());
        b.download(&s)
    }

    /// The `k` highest-scoring groups of each row (ties to the lower index), as a 0/1 mask
    /// over layer `l`'s neurons.
    fn mask(
        &self,
        b: &B,
        l: usize,
        input: &B::Tensor,
        k: usize,
    ) -> Result<B::Tensor, BackendError> {
        let p = &self.partitions[l];
        let scores = self.scores(b, l, input)?;
        let n = scores.len() / p.groups();
        let mut mask = vec![0.0f32; n * p.width()];
        for (r, row) in scores.chunks(p.groups()).enumerate() {
            for g in top_k(row, k) {
                for &i in p.members(g) {
                    mask[r * p.width() + i as usize] = 1.0;
                }
            }
        }
        Ok(b.upload([n, p.width()], &mask))
    }
}

/// The indices of the `k` largest values (ties to the lower index).
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
    idx.truncate(k);
    idx
}

/// The predicted class of each row of `logits` (ties to the lower class).
fn predictions(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &c| row[a].total_cmp(&row[c]).then(c.cmp(&a)))
                .expect("at least one class")
        })
        .collect()
}

/// Analyses the dense ReLU network of each run in `runs` and writes `report.md`, the
/// co-activation figures and (with `options.json`) `results.json`.
///
/// # Errors
/// A run error for a run that is not a trained fully connected image network, groups that do
/// not divide a hidden width, unreadable data or checkpoint, a failed partition or write.
pub fn modularity<B: SparseBackend>(
    mut backend: B,
    device: DeviceInfo,
    runs: &[PathBuf],
    options: &ModularityOptions,
) -> Result<ModularityResults, RunError> {
    let out_dir = RunDir::take(&options.out)?;
    let out = out_dir.path();
    let mut results = Vec::new();
    let mut first = None;
    for dir in runs {
        let (result, coact, back) = analyse_run(backend, device.clone(), dir, options)?;
        backend = back;
        first.get_or_insert(coact);
        results.push(result);
    }
    let mut figures = Vec::new();
    #[cfg(feature = "plots")]
    if let Some(coact) = &first {
        let layers: Vec<_> = coact
            .iter()
            .map(|l| {
                let parts = l.partitions.iter().map(|(m, p)| (*m, p)).collect();
                (l.layer, &l.counts, parts)
            })
            .collect();
        figures.extend(crate::plot::modularity::coactivation(out, &layers).map_err(run_error)?);
    }
    drop(first);
    let dense = runs
        .iter()
        .zip(&results)
        .map(|(dir, r)| {
            let flops = files::read_limited(&dir.join(SUMMARY_FILE), files::SUMMARY_LIMIT)
                .ok()
                .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
                .and_then(|s| s["flops_per_image"].as_u64());
            (r.run.clone(), r.run_seed, r.dense_test_accuracy, flops)
        })
        .collect::<Vec<_>>();
    let converted = converted_results(&options.converted, &dense)?;
    let mut md = report(&results);
    if !converted.is_empty() {
        md.push_str("\n## Converted networks\n");
        md.push_str(&converted_table(&converted));
    }
    let all = ModularityResults {
        runs: results,
        converted,
    };
    write_report(out, &md, options.json.as_deref(), &all, &figures)?;
    Ok(all)
}

/// The co-activation counts of one run's hidden layers with their partitions, for the
/// figure.
pub struct LayerCoActivation {
    /// The hidden layer, from 1.
    pub layer: usize,
    /// Its counts over the training images.
    pub counts: CoActivation,
    /// The partitions by method.
    pub partitions: Vec<(Method, Partition)>,
}

fn analyse_run<B: SparseBackend>(
    b: B,
    device: DeviceInfo,
    dir: &Path,
    options: &ModularityOptions,
) -> Result<(RunModularity, Vec<LayerCoActivation>, B), RunError> {
    let cfg = read_run_config(dir)?;
    let RunConfig::Image(run) = &cfg else {
        return Err(run_error(format!(
            "{} is not an image run; `modula modularity` reads a trained fully connected ReLU network (model.kind = \"mlp\")",
            dir.display()
        )));
    };
    memory::check(&cfg, None)?;
    let data: ImageData = load_data(run)?;
    let mut job = ImageJob::new(b, device.clone(), run, data);
    let ck = read_checkpoint(dir)?;
    job.trainer
        .restore(&ck)
        .map_err(|e| run_error(format!("{}: {e}", dir.display())))?;
    let t = &job.trainer;
    let ImageModel::Mlp(net) = &t.model else {
        return Err(run_error(format!(
            "{} trains a convolutional network; `modula modularity` reads a fully connected ReLU network (model.kind = \"mlp\")",
            dir.display()
        )));
    };
    let layers = Layers {
        net,
        params: &t.params,
    };
    let b = &t.backend;
    let hidden = layers.hidden();
    let m = options.groups;
    if let Some(&w) = hidden.iter().find(|&&w| m == 0 || !w.is_multiple_of(m)) {
        return Err(run_error(format!(
            "--groups {m} does not divide the hidden width {w} of {}; choose a divisor",
            dir.display()
        )));
    }
    let (train, test) = (&t.task.data.train, &t.task.data.test);
    let train_n = match options.train_examples {
        0 => train.len(),
        n => n.min(train.len()),
    };
    let train_positions: Vec<usize> = (0..train_n).collect();
    console::eprint(&format!(
        "modula modularity: {}: counting co-activations over {train_n} training images\n",
        dir.display()
    ))?;

    let counts = coactivations(b, &layers, train, &train_positions)?;

    // Partitions of every hidden layer by every method.
    let partitions = options
        .methods
        .iter()
        .map(|&method| partition_layers(b, &layers, &counts, method, m, options.seed, dir))
        .collect::<Result<Vec<_>, _>>()?;

    // The routers, one set per method, trained on the dense activations.
    console::eprint(&format!(
        "modula modularity: training the routers ({} epochs)\n",
        options.router_epochs
    ))?;
    let inputs = layers.inputs();
    let routers = train_routers(
        b,
        &layers,
        train,
        &train_positions,
        &partitions,
        options.router_epochs,
        options.seed,
    )?;

    // The test set: dense, exact skip and routed forwards.
    console::eprint("modula modularity: evaluating on the test set\n")?;
    let classes = test.classes;
    let ks: Vec<usize> = options
        .k_shares
        .iter()
        .map(|s| ((s * m as f64).round() as usize).clamp(1, m))
        .collect();
    let grouped: Vec<Vec<GroupedProduct<B>>> = partitions
        .iter()
        .map(|ps| {
            ps.iter()
                .enumerate()
                .map(|(l, p)| {
                    let (w, bias) = layers.next(l);
                    GroupedProduct::new(b, p, w, bias)
                })
                .collect()
        })
        .collect();
    let mut dense_correct = 0usize;
    let mut active = vec![0u64; hidden.len()];
    let nm = options.methods.len();
    let mut inactive: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); hidden.len()]; nm];
    let mut recall = vec![vec![[0u64; 2]; hidden.len()]; nm];
    let mut skip_correct = vec![0usize; nm];
    let mut identical = vec![true; nm];
    let mut max_diff = vec![0.0f64; nm];
    let mut routed_correct = vec![vec![0usize; ks.len()]; nm];
    let test_positions: Vec<usize> = (0..test.len()).collect();
    let k_max = ks.iter().copied().max().unwrap_or(1);
    for chunk in test_positions.chunks(CHUNK) {
        let (x, labels) = images(b, test, chunk);
        let correct = |logits: &[f32]| {
            predictions(logits, classes)
                .iter()
                .zip(&labels)
                .filter(|&(&p, &y)| p == y as usize)
                .count()
        };
        let dense = forward(b, &layers, &x, &Compute::Dense).map_err(device_error)?;
        dense_correct += correct(&dense.logits);
        let host: Vec<Vec<f32>> = dense
            .hidden
            .iter()
            .map(|h| b.download(h))
            .collect::<Result<_, _>>()
            .map_err(device_error)?;
        for (l, h) in host.iter().enumerate() {
            active[l] += h.iter().filter(|&&v| v > 0.0).count() as u64;
        }
        for (mi, ps) in partitions.iter().enumerate() {
            for (l, p) in ps.iter().enumerate() {
                let scores = routers[mi]
                    .scores(b, l, &dense.inputs[l])
                    .map_err(device_error)?;
                for (row, s) in h_rows(&host[l], p.width()).zip(scores.chunks(m)) {
                    let act = p.active_groups(row);
                    let off = act.iter().filter(|&&a| !a).count();
                    inactive[mi][l].push(off as f64 / m as f64);
                    let top = top_k(s, k_max);
                    recall[mi][l][0] += top.iter().filter(|&&g| act[g]).count() as u64;
                    recall[mi][l][1] += (m - off).min(k_max) as u64;
                }
            }
            let skipped = forward(b, &layers, &x, &Compute::Grouped(&grouped[mi], true))
                .map_err(device_error)?;
            let full = forward(b, &layers, &x, &Compute::Grouped(&grouped[mi], false))
                .map_err(device_error)?;
            skip_correct[mi] += correct(&skipped.logits);
            identical[mi] &= skipped
                .logits
                .iter()
                .zip(&full.logits)
                .all(|(a, c)| a.to_bits() == c.to_bits());
            for (a, c) in skipped.logits.iter().zip(&dense.logits) {
                max_diff[mi] = max_diff[mi].max((a - c).abs() as f64);
            }
            for (ki, &k) in ks.iter().enumerate() {
                let routed = forward(b, &layers, &x, &Compute::Routed(&routers[mi], k))
                    .map_err(device_error)?;
                routed_correct[mi][ki] += correct(&routed.logits);
            }
        }
    }
    let n_test = test.len();
    let dense_accuracy = dense_correct as f64 / n_test as f64;
    let widths: Vec<usize> = std::iter::once(net.first.d_in)
        .chain(net.layers.iter().map(|l| l.d_in))
        .chain(std::iter::once(net.layers.last().map_or(0, |l| l.d_out)))
        .collect();
    let dense_flops: f64 = widths.windows(2).map(|w| (w[0] * w[1]) as f64).sum();
    let methods = options
        .methods
        .iter()
        .enumerate()
        .map(|(mi, method)| {
            let layers_out = (0..hidden.len())
                .map(|l| {
                    let mut v = inactive[mi][l].clone();
                    v.sort_by(f64::total_cmp);
                    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
                    let mut histogram = vec![0u64; m + 1];
                    for &f in &v {
                        histogram[(f * m as f64).round() as usize] += 1;
                    }
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    // The layer's FLOPs: its input product (widths[l] x width) and the next
                    // one (width x widths[l + 2]); an exact skip saves only the latter's
                    // inactive groups.
                    let (before, after) = (widths[l] as f64, widths[l + 2] as f64);
                    LayerGroups {
                        layer: l + 1,
                        within_fraction: partitions[mi][l].within_fraction(&counts[l]),
                        inactive_mean: mean,
                        inactive_quantiles: [q(0.0), q(0.1), q(0.5), q(0.9), q(1.0)],
                        inactive_histogram: histogram,
                        exact_layer_flops_saved: mean * after / (before + after),
                        router_recall: recall[mi][l][0] as f64 / recall[mi][l][1].max(1) as f64,
                    }
                })
                .collect();
            let routed = ks
                .iter()
                .enumerate()
                .map(|(ki, &k)| {
                    let accuracy = routed_correct[mi][ki] as f64 / n_test as f64;
                    let kept: Vec<f64> = widths
                        .iter()
                        .enumerate()
                        .map(|(i, &w)| {
                            if i == 0 || i + 1 == widths.len() {
                                w as f64
                            } else {
                                w as f64 * k as f64 / m as f64
                            }
                        })
                        .collect();
                    let routers: f64 = inputs.iter().map(|&d| (d * m) as f64).sum();
                    let flops: f64 = kept.windows(2).map(|w| w[0] * w[1]).sum::<f64>() + routers;
                    Routed {
                        k,
                        k_share: k as f64 / m as f64,
                        test_accuracy: accuracy,
                        accuracy_lost: dense_accuracy - accuracy,
                        network_flops_share: flops / dense_flops,
                    }
                })
                .collect();
            MethodResult {
                method: method.name().to_string(),
                layers: layers_out,
                exact_skip_accuracy: skip_correct[mi] as f64 / n_test as f64,
                exact_skip_identical: identical[mi],
                exact_skip_max_abs_diff: max_diff[mi],
                routed,
            }
        })
        .collect();
    let coact = counts
        .into_iter()
        .enumerate()
        .map(|(l, counts)| LayerCoActivation {
            layer: l + 1,
            counts,
            partitions: options
                .methods
                .iter()
                .zip(&partitions)
                .map(|(&method, ps)| (method, ps[l].clone()))
                .collect(),
        })
        .collect();
    let result = RunModularity {
        run: dir.display().to_string(),
        run_seed: run.seed,
        seed: options.seed,
        hidden: hidden.clone(),
        groups: m,
        train_examples: train_n,
        test_examples: n_test,
        router_epochs: options.router_epochs,
        active_fraction: active
            .iter()
            .zip(&hidden)
            .map(|(&a, &w)| a as f64 / (w * n_test) as f64)
            .collect(),
        dense_test_accuracy: dense_accuracy,
        methods,
        device,
    };
    Ok((result, coact, job.trainer.backend))
}

/// The co-activation counts of every hidden layer of `layers` over the images of `set` at
/// `positions`.
pub(crate) fn coactivations<B: SparseBackend>(
    b: &B,
    layers: &Layers<'_, B>,
    set: &modula_data::ImageSet,
    positions: &[usize],
) -> Result<Vec<CoActivation>, RunError> {
    let mut counts: Vec<CoActivation> = layers
        .hidden()
        .iter()
        .map(|&w| CoActivation::new(w))
        .collect();
    for chunk in positions.chunks(CHUNK) {
        let (x, _) = images(b, set, chunk);
        let pass = forward(b, layers, &x, &Compute::Dense).map_err(device_error)?;
        for (c, h) in counts.iter_mut().zip(&pass.hidden) {
            c.add(b, h).map_err(device_error)?;
        }
    }
    Ok(counts)
}

/// The partition of every hidden layer into `m` groups by `method` (layer `l` seeded by
/// `seed + l`), from its co-activation `counts` or its input weights; errors name the run
/// `dir`.
pub(crate) fn partition_layers<B: SparseBackend>(
    b: &B,
    layers: &Layers<'_, B>,
    counts: &[CoActivation],
    method: Method,
    m: usize,
    seed: u64,
    dir: &Path,
) -> Result<Vec<Partition>, RunError> {
    let mut per_layer = Vec::new();
    for (l, co) in counts.iter().enumerate() {
        let seed = seed.wrapping_add(l as u64);
        let p = match method {
            Method::Metis => Partition::metis(co, m, seed),
            Method::Kmeans => {
                let w = b.download(layers.input_weight(l)).map_err(device_error)?;
                let [d_in, width] = b.shape(layers.input_weight(l));
                // Neuron i reads column i of the weight: its vector is that column.
                let points: Vec<f32> = (0..width)
                    .flat_map(|i| (0..d_in).map(move |k| (k, i)))
                    .map(|(k, i)| w[k * width + i])
                    .collect();
                Partition::balanced_kmeans(&points, d_in, m, seed)
            }
            Method::Random => Partition::random(co.width(), m, seed),
            Method::Blocks => Partition::blocks(co.width(), m),
        }
        .map_err(|e| run_error(format!("layer {} of {}: {e}", l + 1, dir.display())))?;
        per_layer.push(p);
    }
    Ok(per_layer)
}

/// One set of routers per set of partitions, trained for `epochs` passes (shuffled from
/// `seed`) over the images of `set` at `positions` on the dense network's activations.
pub(crate) fn train_routers<B: SparseBackend>(
    b: &B,
    layers: &Layers<'_, B>,
    set: &modula_data::ImageSet,
    positions: &[usize],
    partitions: &[Vec<Partition>],
    epochs: usize,
    seed: u64,
) -> Result<Vec<Routers<B>>, RunError> {
    let inputs = layers.inputs();
    let mut routers: Vec<Routers<B>> = partitions
        .iter()
        .map(|p| Routers::new(b, &inputs, p.clone(), seed))
        .collect();
    let mut adams: Vec<Adam<B>> = routers.iter().map(|_| Adam::new(ROUTER_LR)).collect();
    let mut grads = Grads::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..epochs {
        let mut order = positions.to_vec();
        order.shuffle(&mut rng);
        for batch in order.chunks(ROUTER_BATCH) {
            let (x, _) = images(b, set, batch);
            let pass = forward(b, layers, &x, &Compute::Dense).map_err(device_error)?;
            for (r, adam) in routers.iter_mut().zip(&mut adams) {
                r.step(b, adam, &mut grads, &pass).map_err(device_error)?;
            }
        }
    }
    Ok(routers)
}

/// The rows of a row-major matrix `width` wide.
fn h_rows(h: &[f32], width: usize) -> std::slice::Chunks<'_, f32> {
    h.chunks(width.max(1))
}

/// The report's tables.
fn report(results: &[RunModularity]) -> String {
    let mut md = String::from("# Discovered modules\n\n");
    for r in results {
        md.push_str(&format!(
            "## {} (run seed {}, analysis seed {})\n\n{} groups of {} neurons per hidden layer; co-activations and routers from {} training images, {} router epochs; {} test images. Dense test accuracy {:.4}; active neurons per hidden layer (test) {}.\n\n",
            r.run,
            r.run_seed,
            r.seed,
            r.groups,
            r.hidden.first().map_or(0, |w| w / r.groups.max(1)),
            r.train_examples,
            r.router_epochs,
            r.test_examples,
            r.dense_test_accuracy,
            r.active_fraction.iter().map(|f| format!("{f:.3}")).collect::<Vec<_>>().join(" / "),
        ));
        md.push_str("| method | layer | co-activation inside groups | inactive groups per image: mean | min / p10 / median / p90 / max | layer FLOPs an exact skip saves | router recall at the largest K |\n|---|---|---|---|---|---|---|\n");
        for mr in &r.methods {
            for l in &mr.layers {
                let q = l.inactive_quantiles;
                md.push_str(&format!(
                    "| {} | {} | {:.3} | {:.3} | {:.3} / {:.3} / {:.3} / {:.3} / {:.3} | {:.3} | {:.3} |\n",
                    mr.method, l.layer, l.within_fraction, l.inactive_mean, q[0], q[1], q[2], q[3], q[4], l.exact_layer_flops_saved, l.router_recall
                ));
            }
        }
        md.push_str("\n| method | exact-skip accuracy | bit-identical to the unskipped grouped product | max abs logit diff to dense |");
        let ks: Vec<&Routed> = r
            .methods
            .first()
            .map(|m| m.routed.iter().collect())
            .unwrap_or_default();
        for k in &ks {
            md.push_str(&format!(
                " routed K = {} ({:.0}%): accuracy (lost) |",
                k.k,
                100.0 * k.k_share
            ));
        }
        md.push_str("\n|---|---|---|---|");
        md.push_str(&"---|".repeat(ks.len()));
        md.push('\n');
        for mr in &r.methods {
            md.push_str(&format!(
                "| {} | {:.4} | {} | {:.2e} |",
                mr.method,
                mr.exact_skip_accuracy,
                if mr.exact_skip_identical { "yes" } else { "no" },
                mr.exact_skip_max_abs_diff
            ));
            for k in &mr.routed {
                md.push_str(&format!(
                    " {:.4} ({:+.2} points) |",
                    k.test_accuracy,
                    -100.0 * k.accuracy_lost
                ));
            }
            md.push('\n');
        }
        if let Some(mr) = r.methods.first() {
            md.push_str(
                "\nFLOPs of the routed forward over the dense forward (routers included), by K: ",
            );
            md.push_str(
                &mr.routed
                    .iter()
                    .map(|k| format!("K = {}: {:.3}", k.k, k.network_flops_share))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            md.push_str("\n\n");
        }
    }
    md
}
