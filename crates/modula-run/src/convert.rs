//! `modula convert`: a trained dense ReLU network made modular. Each hidden layer's neurons
//! are partitioned into `M` groups (METIS on the co-activation graph, balanced k-means on the
//! weights, or random, as `modula modularity` does), a linear router per layer is trained to
//! predict the groups with an active neuron, and a new image run is written whose network of
//! neuron groups ([`modula_em::models::GroupNet`]) holds the dense weights group by group and
//! the routers as its gates. `modula train --resume` continues that run by EM (or noisy top-k,
//! or whichever algorithm the conversion named).
//!
//! With every group selected the converted network computes the dense one: each neuron keeps
//! its weights, only their order changes (so sums may round differently in the last bits).

use std::path::{Path, PathBuf};

use modula_cluster::{Method, Partition};
use modula_data::Dataset;
use modula_em::Algo;
use modula_em::models::{ImageModel, ImageNet, ReluMlp};
use modula_nn::{Checkpoint, ParamStore, StoredTensor};
use modula_sparse::SparseBackend;
use serde::Serialize;

use crate::config::RunConfig;
use crate::dir::{CONVERT_FILE, DeviceInfo, read_checkpoint, read_run_config};
use crate::driver::Hooks;
use crate::error::{RunError, run_error};
use crate::images::device_error;
use crate::images::{ImageJob, load_data};
use crate::modularity::{Layers, coactivations, partition_layers, train_routers};
use crate::start::Start;
use crate::{console, memory};

/// What `modula convert` does.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Groups per hidden layer, `M`.
    pub modules: usize,
    /// Groups computed per image, `K`.
    pub k: usize,
    /// How the neurons are partitioned.
    pub method: Method,
    /// The algorithm the converted run continues with (`em`, `topk`, `reinforce` or
    /// `uniform`).
    pub algo: Algo,
    /// Epochs the converted run trains when resumed (its `train.epochs`).
    pub epochs: usize,
    /// Seeds the partition and the routers.
    pub seed: u64,
    /// Passes over the training images that train the routers.
    pub router_epochs: usize,
    /// Training images counted and routed on (0: the whole training set).
    pub train_examples: usize,
    /// The new run's directory.
    pub out: PathBuf,
}

/// The record of a conversion (`convert.json` in the new run).
#[derive(Clone, Debug, Serialize)]
pub struct Conversion {
    /// The dense run converted.
    pub dense_run: String,
    /// The partition method.
    pub method: String,
    /// Groups per hidden layer.
    pub modules: usize,
    /// Groups computed per image.
    pub k: usize,
    /// The algorithm the new run trains with.
    pub algo: String,
    /// The partition and router seed.
    pub seed: u64,
    /// Router epochs.
    pub router_epochs: usize,
    /// Training images the partition and routers used.
    pub train_examples: usize,
    /// Per hidden layer, the share of co-activation mass between distinct neurons inside the
    /// groups.
    pub within_fraction: Vec<f64>,
}

/// The dense layer weights of hidden layer `l`: its input product's weight `[d_in, width]` and
/// bias `[1, width]`, on the host.
fn input_product<B: SparseBackend>(
    b: &B,
    net: &ReluMlp,
    params: &ParamStore<B>,
    l: usize,
) -> Result<(Vec<f32>, Vec<f32>), RunError> {
    let (w, bias) = match l {
        0 => (net.first.weight, net.first.bias),
        _ => (net.layers[l - 1].weight, net.layers[l - 1].bias),
    };
    Ok((
        b.download(params.get(w)).map_err(device_error)?,
        b.download(params.get(bias)).map_err(device_error)?,
    ))
}

/// The parameters of the network of neuron groups that computes `net` (parameters `params`)
/// with hidden layer `l`'s neurons grouped by `partitions[l]` and its gate scoring the groups
/// by `routers[l]` (`(weight [d_in, M], bias [1, M])` over the layer's input in the dense
/// network's order), named as [`modula_em::models::GroupNet`] names them for `algo`.
///
/// Group `g` of layer `l` holds the neurons `partitions[l].members(g)` in ascending order;
/// every product's input rows follow the previous layer's partition order.
///
/// # Errors
/// A device failure, or partitions and routers that do not fit the network.
pub fn converted_params<B: SparseBackend>(
    b: &B,
    net: &ReluMlp,
    params: &ParamStore<B>,
    partitions: &[Partition],
    routers: &[(Vec<f32>, Vec<f32>)],
    algo: Algo,
) -> Result<Checkpoint, RunError> {
    let hidden = net.layers.len();
    if partitions.len() != hidden || routers.len() != hidden {
        return Err(run_error(format!(
            "the network has {hidden} hidden layers, but {} partitions and {} routers were given",
            partitions.len(),
            routers.len()
        )));
    }
    let mut ck = Checkpoint::new();
    let mut previous: Option<&Partition> = None;
    for (l, (p, (rw, rb))) in partitions.iter().zip(routers).enumerate() {
        let (w, bias) = input_product(b, net, params, l)?;
        let (m, size, width) = (p.groups(), p.group_size(), p.width());
        let d_in = w.len() / width.max(1);
        if d_in * width != w.len() || rw.len() != d_in * m || rb.len() != m {
            return Err(run_error(format!(
                "hidden layer {}: its weight is {} values for width {width}, its router {} x {}",
                l + 1,
                w.len(),
                rw.len(),
                rb.len()
            )));
        }
        // Input row r of the converted layer is the dense layer's row `source(r)`.
        let source = |r: usize| previous.map_or(r, |q| q.order()[r] as usize);
        let order = p.order();
        let mut stacked = vec![0.0f32; m * d_in * size];
        for g in 0..m {
            for r in 0..d_in {
                let row = &w[source(r) * width..][..width];
                for c in 0..size {
                    stacked[(g * d_in + r) * size + c] = row[order[g * size + c] as usize];
                }
            }
        }
        let group_bias: Vec<f32> = order.iter().map(|&i| bias[i as usize]).collect();
        let gate: Vec<f32> = (0..d_in)
            .flat_map(|r| rw[source(r) * m..][..m].iter().copied())
            .collect();
        let name = format!("g{l}");
        ck.insert(
            format!("{name}.weight"),
            StoredTensor::f32(vec![m * d_in, size], stacked),
        );
        ck.insert(
            format!("{name}.bias"),
            StoredTensor::f32(vec![m, size], group_bias),
        );
        let gate_name = match algo {
            Algo::Topk => {
                // Noisy top-k starts as it always does: noise weights at zero.
                ck.insert(
                    format!("{name}.gate.noise.weight"),
                    StoredTensor::f32(vec![d_in, m], vec![0.0; d_in * m]),
                );
                ck.insert(
                    format!("{name}.gate.noise.bias"),
                    StoredTensor::f32(vec![1, m], vec![0.0; m]),
                );
                format!("{name}.gate.clean")
            }
            _ => format!("{name}.ctrl"),
        };
        ck.insert(
            format!("{gate_name}.weight"),
            StoredTensor::f32(vec![d_in, m], gate),
        );
        ck.insert(
            format!("{gate_name}.bias"),
            StoredTensor::f32(vec![1, m], rb.clone()),
        );
        previous = Some(p);
    }
    let last = net
        .layers
        .last()
        .expect("a ReLU network has an output layer");
    let w = b.download(params.get(last.weight)).map_err(device_error)?;
    let bias = b.download(params.get(last.bias)).map_err(device_error)?;
    let p = previous.expect("a ReLU network has a hidden layer");
    let classes = last.d_out;
    let classifier: Vec<f32> = p
        .order()
        .iter()
        .flat_map(|&i| w[i as usize * classes..][..classes].iter().copied())
        .collect();
    ck.insert(
        "classifier.weight",
        StoredTensor::f32(vec![p.width(), classes], classifier),
    );
    ck.insert("classifier.bias", StoredTensor::f32(vec![1, classes], bias));
    Ok(ck)
}

/// Converts the dense run in `dense` into a new run in `options.out` (see the module's
/// documentation), whose first checkpoint (step 0, with the step-0 evaluation in its
/// history) holds the converted network, and EM's table, for an EM run, each training image's
/// greedy selection. Writes [`CONVERT_FILE`] beside it.
///
/// # Errors
/// A run error for a run that is not a trained fully connected image network, groups that do
/// not divide a hidden width, a `K` outside `1..=M`, a dense algorithm, an output directory
/// that holds a run, unreadable data or checkpoint, a failed partition or write.
pub fn convert<B: SparseBackend>(
    backend: B,
    device: DeviceInfo,
    dense: &Path,
    options: &ConvertOptions,
) -> Result<Conversion, RunError> {
    let cfg = read_run_config(dense)?;
    let not_mlp = || {
        run_error(format!(
            "{} is not a fully connected ReLU image run (model.kind = \"mlp\"); `modula convert` reads one",
            dense.display()
        ))
    };
    let RunConfig::Image(run) = &cfg else {
        return Err(not_mlp());
    };
    if run.model.kind != ImageNet::Mlp {
        return Err(not_mlp());
    }
    let (m, k) = (options.modules, options.k);
    if options.algo == Algo::Dense {
        return Err(run_error(
            "--algo dense has no groups to route; use em, topk, reinforce or uniform",
        ));
    }
    if m == 0 || k == 0 || k > m {
        return Err(run_error(format!(
            "--k {k} with --modules {m}: use 1 <= K <= M groups per image"
        )));
    }
    // Noisy top-k keeps at least two groups (with one its gate gets no gradient), so a
    // top-k run of K = 1 would record one K and compute another.
    if options.algo == Algo::Topk && k < 2 {
        return Err(run_error(format!(
            "--algo topk computes at least 2 groups per image, not --k {k}; use --k 2 or more"
        )));
    }
    if let Some(&w) = run.model.hidden.iter().find(|&&w| !w.is_multiple_of(m)) {
        return Err(run_error(format!(
            "--modules {m} does not divide the hidden width {w} of {}; choose a divisor",
            dense.display()
        )));
    }
    // The new run: the dense run's task, seed and training settings, its network now groups.
    let mut new = run.clone();
    new.model.kind = ImageNet::Groups;
    new.model.modules = m;
    new.model.k = k;
    new.model.l1_activations = 0.0;
    new.model.l1_weights = 0.0;
    new.model.l1_groups = 0.0;
    new.train.algo = options.algo;
    new.train.epochs = options.epochs;
    let new_cfg = RunConfig::Image(new);
    new_cfg.validate()?;
    // Refused here, before the analysis, when the directory already holds a run.
    let mut start = Start::fresh(new_cfg, &options.out)?;

    memory::check(&cfg, None)?;
    let data = load_data(run)?;
    let mut job = ImageJob::new(backend, device.clone(), run, data);
    job.trainer
        .restore(&read_checkpoint(dense)?)
        .map_err(|e| run_error(format!("{}: {e}", dense.display())))?;
    let (initial, conversion) = {
        let t = &job.trainer;
        let ImageModel::Mlp(net) = &t.model else {
            return Err(not_mlp());
        };
        let b = &t.backend;
        let layers = Layers {
            net,
            params: &t.params,
        };
        let train = &t.task.data.train;
        let n = match options.train_examples {
            0 => train.len(),
            n => n.min(train.len()),
        };
        let positions: Vec<usize> = (0..n).collect();
        console::eprint(&format!(
            "modula convert: {}: partitioning by {} over {n} training images\n",
            dense.display(),
            options.method.name()
        ))?;
        let counts = coactivations(b, &layers, train, &positions)?;
        let partitions =
            partition_layers(b, &layers, &counts, options.method, m, options.seed, dense)?;
        console::eprint(&format!(
            "modula convert: training the routers ({} epochs)\n",
            options.router_epochs
        ))?;
        let routers = train_routers(
            b,
            &layers,
            train,
            &positions,
            std::slice::from_ref(&partitions),
            options.router_epochs,
            options.seed,
        )?
        .remove(0);
        let router_weights = routers
            .linears
            .iter()
            .map(|lin| {
                Ok((
                    b.download(routers.params.get(lin.weight))
                        .map_err(device_error)?,
                    b.download(routers.params.get(lin.bias))
                        .map_err(device_error)?,
                ))
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        let ck = converted_params(
            b,
            net,
            &t.params,
            &partitions,
            &router_weights,
            options.algo,
        )?;
        let conversion = Conversion {
            dense_run: dense.display().to_string(),
            method: options.method.name().to_string(),
            modules: m,
            k,
            algo: options.algo.name().to_string(),
            seed: options.seed,
            router_epochs: options.router_epochs,
            train_examples: n,
            within_fraction: partitions
                .iter()
                .zip(&counts)
                .map(|(p, c)| p.within_fraction(c))
                .collect(),
        };
        (ck, conversion)
    };
    let backend = job.trainer.backend;
    start.initial = Some(initial);
    // The run is written up to its first checkpoint (with the step-0 evaluation) and stopped
    // there; `modula train --resume` trains it.
    let mut stop = || true;
    match crate::train(
        backend,
        device,
        start,
        Hooks {
            quiet: false,
            interrupted: Some(&mut stop),
        },
    ) {
        Ok(()) | Err(RunError::Interrupted { .. }) => {}
        Err(e) => return Err(e),
    }
    let text = serde_json::to_string_pretty(&conversion)
        .map_err(|e| run_error(format!("cannot encode {CONVERT_FILE}: {e}")))?;
    crate::files::replace(
        &options.out.join(CONVERT_FILE),
        "convert",
        format!("{text}\n").as_bytes(),
    )?;
    Ok(conversion)
}
