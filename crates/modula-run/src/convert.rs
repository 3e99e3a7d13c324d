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
use crate::dir::{DeviceInfo, read_checkpoint, read_run_config};
use crate::driver::Hooks;
use crate::error::{RunError, run_error};
use crate::images::{ImageJob, load_data};
use crate::modularity::{Layers, coactivations, device_error, partition_layers, train_routers};
use crate::start::Start;
use crate::{console, memory};

/// File in the converted run's directory recording where it came from.
pub const CONVERT_FILE: &str = "convert.json";

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

/// A converted run (or a network of groups trained from scratch) beside the dense network it
/// is compared with, as `modula modularity --converted` tabulates it.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertedResult {
    /// The run directory.
    pub run: String,
    /// `"converted"` (by `modula convert`), `"scratch"` (a network of groups trained from its
    /// seed) or `"dense"` (a dense ReLU run, such as the dense network trained further: a
    /// control for the refinement's extra epochs).
    pub origin: String,
    /// The dense run it was converted from (converted runs).
    pub dense_run: Option<String>,
    /// The partition method (converted runs).
    pub method: Option<String>,
    /// The run's seed.
    pub seed: u64,
    /// Groups per hidden layer, `M`.
    pub modules: usize,
    /// Groups computed per image, `K`.
    pub k: usize,
    /// `K / M`, the share of each hidden layer's FLOPs computed.
    pub k_share: f64,
    /// The algorithm that trained it.
    pub algo: String,
    /// Epochs trained (after the conversion, for a converted run).
    pub epochs: f64,
    /// The dense network's test accuracy (the dense run of the same seed).
    pub dense_test_accuracy: Option<f64>,
    /// Test accuracy at step 0: for a converted run, the converted network before any
    /// refinement.
    pub initial_test_accuracy: Option<f64>,
    /// Test accuracy at the end of the run.
    pub test_accuracy: f64,
    /// Converted runs: the dense accuracy minus the step-0 accuracy (what routing lost).
    pub routing_lost: Option<f64>,
    /// Converted runs: the share of that loss the refinement recovered,
    /// `(final - initial) / (dense - initial)`.
    pub recovered_share: Option<f64>,
    /// FLOPs of one image's forward pass (gates included) over the dense network's.
    pub network_flops_share: Option<f64>,
}

/// Reads the converted (or scratch) group runs `runs` and compares each with the dense run it
/// came from, or else the one of `dense` (directory, seed, test accuracy, FLOPs per image)
/// with its seed.
///
/// # Errors
/// A run error naming a run whose summary, history or conversion record cannot be read, or
/// that is not a network of neuron groups.
pub fn converted_results(
    runs: &[PathBuf],
    dense: &[(String, u64, f64, Option<u64>)],
) -> Result<Vec<ConvertedResult>, RunError> {
    let read = |path: &Path| -> Result<serde_json::Value, RunError> {
        let text = crate::files::read_limited(path, crate::files::SUMMARY_LIMIT)
            .map_err(|e| run_error(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| run_error(format!("{} is not JSON: {e}", path.display())))
    };
    runs.iter()
        .map(|dir| {
            let s = read(&dir.join(crate::dir::SUMMARY_FILE))?;
            let dense_model = s["model"] == "mlp";
            if s["model"] != "groups" && !dense_model {
                return Err(run_error(format!(
                    "{} is neither a network of neuron groups nor a dense ReLU network (model \"{}\"); --converted takes runs written by `modula convert`, trained with model.kind = \"groups\" or \"mlp\"",
                    dir.display(),
                    s["model"].as_str().unwrap_or("?")
                )));
            }
            let conversion = dir.join(CONVERT_FILE);
            let c = conversion.is_file().then(|| read(&conversion)).transpose()?;
            let seed = s["seed"].as_u64().unwrap_or(0);
            let dense_run = c.as_ref().and_then(|c| c["dense_run"].as_str().map(String::from));
            let base = dense
                .iter()
                .find(|d| dense_run.as_deref() == Some(d.0.as_str()))
                .or_else(|| dense.iter().find(|d| d.1 == seed));
            let initial = crate::history::read(&dir.join(crate::dir::METRICS_FILE))?
                .records
                .iter()
                .find(|r| r["step"] == 0)
                .and_then(|r| r["test_accuracy"].as_f64());
            let number = |key: &str| {
                s[key].as_f64().ok_or_else(|| {
                    run_error(format!("{} lacks `{key}`", dir.join("summary.json").display()))
                })
            };
            // A dense network computes its one group.
            let (modules, k) = if dense_model {
                (1, 1)
            } else {
                (number("modules")? as usize, number("k")? as usize)
            };
            let test_accuracy = number("test_accuracy")?;
            let dense_accuracy = base.map(|d| d.2);
            let lost = c
                .as_ref()
                .and(dense_accuracy.zip(initial))
                .map(|(d, i)| d - i);
            Ok(ConvertedResult {
                run: dir.display().to_string(),
                origin: match (&c, dense_model) {
                    (Some(_), _) => "converted",
                    (None, true) => "dense",
                    (None, false) => "scratch",
                }
                .into(),
                dense_run,
                method: c.as_ref().and_then(|c| c["method"].as_str().map(String::from)),
                seed,
                modules,
                k,
                k_share: k as f64 / modules.max(1) as f64,
                algo: s["algo"].as_str().unwrap_or("?").into(),
                epochs: number("epochs")?,
                dense_test_accuracy: dense_accuracy,
                initial_test_accuracy: initial,
                test_accuracy,
                routing_lost: lost,
                recovered_share: lost
                    .zip(initial)
                    .filter(|(l, _)| *l > 0.0)
                    .map(|(l, i)| (test_accuracy - i) / l),
                network_flops_share: base
                    .and_then(|d| d.3)
                    .zip(s["flops_per_image"].as_u64())
                    .map(|(d, f)| f as f64 / d as f64),
            })
        })
        .collect()
}

/// The markdown table of `results`.
pub fn converted_table(results: &[ConvertedResult]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.4}", v));
    let mut md = String::from(
        "\n| run | origin | seed | K / M | algo | epochs | dense | step 0 | end | routing lost (points) | recovered | network FLOPs |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {}/{} | {} | {:.1} | {} | {} | {:.4} | {} | {} | {} |\n",
            r.run,
            r.origin,
            r.seed,
            r.k,
            r.modules,
            r.algo,
            r.epochs,
            pct(r.dense_test_accuracy),
            pct(r.initial_test_accuracy),
            r.test_accuracy,
            r.routing_lost
                .map_or("-".into(), |l| format!("{:.2}", 100.0 * l)),
            r.recovered_share
                .map_or("-".into(), |s| format!("{:.0}%", 100.0 * s)),
            r.network_flops_share
                .map_or("-".into(), |s| format!("{:.3}", s)),
        ));
    }
    md
}
