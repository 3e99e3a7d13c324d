//! `cargo xtask bench [NAME...]`: runs criterion benches and turns their estimates into JSON
//! figures, one file per bench under `target/bench/NAME.json`.
//!
//! Every bench target in `benches/benches/*.rs` can be run by name. What ends up in its JSON is
//! decided by a post-processing function in [`POST_PROCESSORS`]; a bench without one gets
//! [`generic_figures`] (one entry per criterion benchmark id). A new bench that needs derived
//! fields (for example `efficiency = dense_s / modular_s`) adds one function and one table row.
//!
//! `--import DIR` turns results produced elsewhere into the same JSON without running anything:
//! a GPU machine without a Rust toolchain runs the prebuilt bench binary with
//! `CARGO_TARGET_DIR=DIR` (criterion then writes `DIR/criterion/`, the bench its side files under
//! `DIR/bench/`) and describes itself in `DIR/machine.json`; see docs/wgpu.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::{cargo, target_dir, workspace_root};

/// Criterion settings that keep a full `cargo xtask bench` within a few minutes on two cores.
/// Ten samples is criterion's minimum; the figures are for spotting regressions and gaps of
/// tens of percent, not for publication-grade confidence intervals.
const CRITERION_ARGS: &[&str] = &[
    "--warm-up-time",
    "1",
    "--measurement-time",
    "2",
    "--sample-size",
    "10",
    "--noplot",
];

/// Parsed command line of `cargo xtask bench`.
#[derive(Debug)]
pub struct Options {
    /// Bench targets to run; empty means all of them.
    names: Vec<String>,
    /// Whether the benches time their external BLAS peers (MKL, numpy) beside modula (on by
    /// default; a peer that is missing is only skipped).
    peers: bool,
    /// The Python interpreter that runs the peers (else `$MODULA_BENCH_PYTHON`, else
    /// `python3`).
    python: Option<PathBuf>,
    /// Extra arguments for criterion, after `--`.
    criterion_args: Vec<String>,
    /// Results produced elsewhere to turn into JSON instead of running the benches.
    import: Option<PathBuf>,
}

impl Options {
    /// Parses the arguments after `bench`.
    ///
    /// # Errors
    /// An unknown flag.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            names: Vec::new(),
            peers: true,
            python: None,
            criterion_args: Vec::new(),
            import: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--no-peers" => options.peers = false,
                "--python" => {
                    let python = args
                        .next()
                        .ok_or("`--python` needs an interpreter (one that imports numpy, and mkl or torch)")?;
                    options.python = Some(PathBuf::from(python));
                }
                "--import" => {
                    let dir = args
                        .next()
                        .ok_or("`--import` needs a directory (criterion/, bench/, machine.json)")?;
                    options.import = Some(PathBuf::from(dir));
                }
                "--" => {
                    options.criterion_args = args.cloned().collect();
                    break;
                }
                flag if flag.starts_with('-') => {
                    return Err(format!("unknown option `{flag}`"));
                }
                name => options.names.push(name.to_owned()),
            }
        }
        Ok(options)
    }
}

/// One criterion benchmark result, read from `target/criterion/**/new/`.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The full benchmark id, e.g. `cpu/matmul/t1/512x512x512`.
    pub id: String,
    /// Mean time per iteration in seconds (criterion's `mean.point_estimate`, which is in ns).
    pub seconds: f64,
    /// Lower and upper bound of criterion's confidence interval for the mean, in seconds.
    pub seconds_ci: (f64, f64),
    /// The declared throughput per iteration, e.g. `("Elements", 268435456)`.
    pub throughput: Option<(String, u64)>,
    /// When criterion wrote the estimate (its file's modification time), if known.
    pub written: Option<SystemTime>,
}

/// What a post-processing function gets besides the measurements.
pub struct Context {
    /// Where the bench wrote its side files (`target/bench`, or `DIR/bench` under `--import`).
    pub side_files: PathBuf,
}

/// The figures of one bench: top-level fields plus one entry per measured configuration.
pub struct Figures {
    /// Fields of the JSON object besides `bench`, `machine` and `entries`.
    pub fields: Map<String, Value>,
    /// One object per configuration; printed as a table.
    pub entries: Vec<Map<String, Value>>,
    /// Table columns, in order (the JSON map itself is sorted by key).
    pub columns: Vec<&'static str>,
}

/// Turns a bench's criterion measurements into its figures.
type PostProcess = fn(&Context, &[Measurement]) -> Result<Figures, String>;

/// Bench name to post-processing function. Benches not listed use [`generic_figures`].
const POST_PROCESSORS: &[(&str, PostProcess)] = &[
    ("gemm", gemm_figures),
    ("modular", modular_figures),
    ("data", data_figures),
    ("em", em_figures),
    ("wgpu", wgpu_figures),
    ("sparse", crate::bench_sparse::figures),
];

/// Runs the requested benches and writes their figures.
///
/// # Errors
/// An unknown bench name, a failing `cargo bench`, or results that cannot be read or written.
pub fn run(options: &Options) -> Result<(), String> {
    let available = bench_targets()?;
    let names = if options.names.is_empty() {
        available.clone()
    } else {
        for name in &options.names {
            if !available.contains(name) {
                return Err(format!(
                    "no bench named `{name}`; available: {} (files in benches/benches/)",
                    available.join(", ")
                ));
            }
        }
        options.names.clone()
    };
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let (machine, results) = match &options.import {
        None => (machine(), target_dir()),
        Some(dir) => (read_json(&dir.join("machine.json"))?, dir.clone()),
    };
    let context = Context {
        side_files: results.join("bench"),
    };
    for name in &names {
        let measurements = match &options.import {
            None => run_criterion(name, options)?,
            Some(dir) => imported_measurements(dir, name)?,
        };
        if measurements.is_empty() {
            return Err(format!(
                "bench `{name}` wrote no results under {}; did a criterion filter exclude everything?",
                results.join("criterion").display()
            ));
        }
        let post = POST_PROCESSORS
            .iter()
            .find(|(n, _)| n == name)
            .map_or(generic_figures as PostProcess, |&(_, f)| f);
        let figures = post(&context, &measurements)?;
        let mut object = Map::new();
        object.insert("bench".into(), json!(name));
        object.insert("machine".into(), machine.clone());
        if let Some(dir) = &options.import {
            object.insert("imported_from".into(), json!(dir.display().to_string()));
        }
        object.insert(
            "criterion_args".into(),
            json!(
                CRITERION_ARGS
                    .iter()
                    .map(|s| s.to_string())
                    .chain(options.criterion_args.iter().cloned())
                    .collect::<Vec<_>>()
            ),
        );
        object.extend(figures.fields);
        object.insert(
            "entries".into(),
            Value::Array(figures.entries.iter().cloned().map(Value::Object).collect()),
        );
        let path = out_dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&Value::Object(object))
            .expect("JSON values always serialise");
        std::fs::write(&path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!(
            "\n{name}: {} (figures: {})",
            machine_line(&machine),
            path.display()
        );
        print_table(&figures.columns, &figures.entries);
    }
    Ok(())
}

/// Names of the bench targets: the files `benches/benches/*.rs`, sorted.
fn bench_targets() -> Result<Vec<String>, String> {
    let dir = workspace_root().join("benches").join("benches");
    let read =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<String> = read
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The variables of `modula_benches::peer`: the interpreter that runs the peers, and the
/// switch that turns them off.
const PEER_PYTHON_VAR: &str = "MODULA_BENCH_PYTHON";
const PEERS_VAR: &str = "MODULA_BENCH_PEERS";

/// Runs one bench target under criterion and reads back the results it wrote.
fn run_criterion(name: &str, options: &Options) -> Result<Vec<Measurement>, String> {
    // Anything criterion writes from now on belongs to this run; older result directories
    // (renamed or filtered-out benchmarks) are ignored by comparing modification times.
    let started = SystemTime::now();
    let mut command = Command::new(cargo());
    command
        .args([
            "bench",
            "--package",
            "modula-benches",
            "--bench",
            name,
            "--",
        ])
        .args(CRITERION_ARGS)
        .args(&options.criterion_args)
        .current_dir(workspace_root());
    if !options.peers {
        command.env(PEERS_VAR, "off");
    }
    if let Some(python) = &options.python {
        command.env(PEER_PYTHON_VAR, python);
    }
    println!("==> xtask bench: {name}");
    let status = command
        .status()
        .map_err(|e| format!("could not start cargo bench: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo bench --package modula-benches --bench {name}` failed ({status})"
        ));
    }
    let mut found = Vec::new();
    collect_measurements(&target_dir().join("criterion"), started, &mut found)?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Every result of bench `name` (criterion group `name`) under `dir/criterion/`, whenever it
/// was written.
fn imported_measurements(dir: &Path, name: &str) -> Result<Vec<Measurement>, String> {
    let root = dir.join("criterion").join(name);
    if !root.is_dir() {
        return Err(format!(
            "{} does not exist; run the bench binary with CARGO_TARGET_DIR={} first",
            root.display(),
            dir.display()
        ));
    }
    let mut found = Vec::new();
    collect_measurements(&root, SystemTime::UNIX_EPOCH, &mut found)?;
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Walks criterion's output tree and reads every `new/` directory written after `since`.
fn collect_measurements(
    dir: &Path,
    since: SystemTime,
    out: &mut Vec<Measurement>,
) -> Result<(), String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in read.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let estimates = path.join("estimates.json");
            let fresh = std::fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if fresh {
                out.push(read_measurement(&path)?);
            }
        } else {
            collect_measurements(&path, since, out)?;
        }
    }
    Ok(())
}

/// Reads `benchmark.json` (the id and throughput) and `estimates.json` (the timings).
fn read_measurement(dir: &Path) -> Result<Measurement, String> {
    let benchmark = read_json(&dir.join("benchmark.json"))?;
    let estimates = read_json(&dir.join("estimates.json"))?;
    let id = benchmark["full_id"]
        .as_str()
        .ok_or_else(|| format!("{}: no `full_id`", dir.join("benchmark.json").display()))?
        .to_owned();
    let mean = &estimates["mean"];
    let ns = |v: &Value, field: &str| {
        v.as_f64().ok_or_else(|| {
            format!(
                "{}: no number at `mean.{field}`",
                dir.join("estimates.json").display()
            )
        })
    };
    let seconds = ns(&mean["point_estimate"], "point_estimate")? * 1e-9;
    let lower = ns(
        &mean["confidence_interval"]["lower_bound"],
        "confidence_interval.lower_bound",
    )? * 1e-9;
    let upper = ns(
        &mean["confidence_interval"]["upper_bound"],
        "confidence_interval.upper_bound",
    )? * 1e-9;
    // Criterion serialises `Throughput::Elements(n)` as `{"Elements": n}`.
    let throughput = benchmark["throughput"].as_object().and_then(|t| {
        let (kind, n) = t.iter().next()?;
        Some((kind.clone(), n.as_u64()?))
    });
    let written = std::fs::metadata(dir.join("estimates.json"))
        .and_then(|m| m.modified())
        .ok();
    Ok(Measurement {
        id,
        seconds,
        seconds_ci: (lower, upper),
        throughput,
        written,
    })
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}

/// Figures for a bench without its own post-processing: one entry per benchmark id.
fn generic_figures(_: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let entries = measurements
        .iter()
        .map(|m| {
            let mut entry = Map::new();
            entry.insert("id".into(), json!(m.id));
            entry.insert("seconds".into(), json!(m.seconds));
            entry.insert("seconds_ci".into(), json!([m.seconds_ci.0, m.seconds_ci.1]));
            if let Some((kind, n)) = &m.throughput {
                entry.insert("throughput_kind".into(), json!(kind));
                entry.insert("throughput_per_s".into(), json!(*n as f64 / m.seconds));
            }
            entry
        })
        .collect();
    Ok(Figures {
        fields: Map::new(),
        entries,
        columns: vec!["id", "seconds", "throughput_per_s"],
    })
}

/// One GEMM configuration, parsed back from a benchmark id
/// `cpu/{op}/t{threads}/{rows}x{k}x{n}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GemmShape {
    op: String,
    threads: usize,
    rows: usize,
    k: usize,
    n: usize,
}

fn parse_gemm_id(id: &str) -> Option<GemmShape> {
    let rest = id.strip_prefix("cpu/")?;
    let (op, rest) = rest.split_once("/t")?;
    let (threads, dims) = rest.split_once('/')?;
    let mut dims = dims.split('x').map(|d| d.parse::<usize>().ok());
    let shape = GemmShape {
        op: op.to_owned(),
        threads: threads.parse().ok()?,
        rows: dims.next()??,
        k: dims.next()??,
        n: dims.next()??,
    };
    (["nn", "tn", "nt"].contains(&op) && dims.next().is_none()).then_some(shape)
}

/// The peers whose figures the GEMM and modular JSON carry, strongest first (see
/// `benches/src/peer.rs`).
const PEERS: [&str; 2] = ["mkl", "numpy"];

/// `gemm.json`: per (op, rows, threads) modula's GFLOP/s and each peer's, from the bench's
/// paired rounds (medians over rounds, ratios per round), beside criterion's own figure.
fn gemm_figures(context: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let side = read_side(&context.side_files.join("gemm-paired.json"), measurements)?;
    let mut paired = BTreeMap::new();
    for entry in side
        .as_ref()
        .and_then(|s| s["entries"].as_array())
        .into_iter()
        .flatten()
    {
        let field = |name: &str| entry[name].as_u64().map_or(0, |v| v as usize);
        let shape = GemmShape {
            op: entry["op"].as_str().unwrap_or_default().to_owned(),
            threads: field("threads"),
            rows: field("rows"),
            k: field("k"),
            n: field("n"),
        };
        paired.insert(shape, entry);
    }
    let mut entries = Vec::new();
    for m in measurements {
        let shape = parse_gemm_id(&m.id).ok_or_else(|| {
            format!(
                "unexpected benchmark id `{}` in the gemm bench; expected cpu/<nn|tn|nt>/t<threads>/<rows>x<k>x<n> (see benches/benches/gemm.rs)",
                m.id
            )
        })?;
        let flops = 2.0 * shape.rows as f64 * shape.k as f64 * shape.n as f64;
        let gflops = |seconds: f64| flops / seconds * 1e-9;
        let mut entry = Map::new();
        entry.insert("op".into(), json!(shape.op));
        entry.insert("rows".into(), json!(shape.rows));
        entry.insert("k".into(), json!(shape.k));
        entry.insert("n".into(), json!(shape.n));
        entry.insert("threads".into(), json!(shape.threads));
        entry.insert("criterion_seconds".into(), json!(m.seconds));
        entry.insert("criterion_gflops".into(), json!(gflops(m.seconds)));
        // Without pairs (a filtered or test run) the figure is criterion's.
        entry.insert("gflops".into(), json!(gflops(m.seconds)));
        if let Some(pair) = paired.get(&shape) {
            let seconds = |name: &str| pair[name].as_f64();
            if let Some(s) = seconds("seconds") {
                entry.insert("gflops".into(), json!(gflops(s)));
            }
            if let Some(s) = seconds("t1_seconds") {
                entry.insert("t1_gflops".into(), json!(gflops(s)));
                entry.insert("speedup_over_t1".into(), pair["speedup_over_t1"].clone());
            }
            for peer in PEERS {
                if let Some(s) = seconds(&format!("{peer}_seconds")) {
                    entry.insert(format!("{peer}_gflops"), json!(gflops(s)));
                    let ratio = format!("ratio_vs_{peer}");
                    entry.insert(ratio.clone(), pair[&ratio].clone());
                }
            }
        }
        entries.push(entry);
    }
    entries.sort_by_key(|e| {
        let num = |f: &str| e[f].as_u64().unwrap_or(0);
        let op = ["nn", "tn", "nt"].iter().position(|o| e["op"] == json!(o));
        (num("threads"), op, num("rows"))
    });
    let mut fields = Map::new();
    if let Some(side) = &side {
        fields.insert("peers".into(), side["peers"].clone());
        fields.insert("paired_rounds".into(), side["rounds"].clone());
    }
    Ok(Figures {
        fields,
        entries,
        columns: vec![
            "op",
            "rows",
            "threads",
            "gflops",
            "t1_gflops",
            "speedup_over_t1",
            "mkl_gflops",
            "ratio_vs_mkl",
            "numpy_gflops",
            "ratio_vs_numpy",
        ],
    })
}

/// A modular-layer configuration parsed back from `modular/{kind}/n{n}_m{m}_k{k}`.
fn parse_modular_id(id: &str) -> Option<(String, [usize; 3])> {
    let rest = id.strip_prefix("modular/")?;
    let (kind, config) = rest.split_once('/')?;
    let mut values = [0usize; 3];
    for (slot, (part, prefix)) in values
        .iter_mut()
        .zip(config.split('_').zip(["n", "m", "k"]))
    {
        *slot = part.strip_prefix(prefix)?.parse().ok()?;
    }
    (config.split('_').count() == 3).then(|| (kind.to_string(), values))
}

/// `modular.json`: per (n, M, K) the modular layer's forward+backward time against one dense
/// GEMM of equal FLOPs and against a naive loop of one GEMM per module, with
/// `efficiency = dense_s / modular_s`; plus `scaling_m`, the modular time for M in {4, 16, 64}
/// at n = 4096, K = 2.
fn modular_figures(context: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let mut times: BTreeMap<[usize; 3], BTreeMap<String, f64>> = BTreeMap::new();
    for m in measurements {
        let (kind, config) = parse_modular_id(&m.id).ok_or_else(|| {
            format!("unexpected benchmark id `{}` in the modular bench; expected modular/<kind>/n<n>_m<m>_k<k> (see benches/benches/modular.rs)", m.id)
        })?;
        times.entry(config).or_default().insert(kind, m.seconds);
    }
    let side = read_side(
        &context.side_files.join("modular-paired.json"),
        measurements,
    )?;
    let paired: BTreeMap<&str, &Value> = side
        .as_ref()
        .and_then(|s| s["entries"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["config"].as_str()?, e)))
        .collect();
    let mut entries = Vec::new();
    for (&[n, m, k], t) in &times {
        let (Some(&modular), Some(&dense)) = (t.get("modular"), t.get("dense")) else {
            continue;
        };
        let mut entry = Map::new();
        entry.insert("n".into(), json!(n));
        entry.insert("m".into(), json!(m));
        entry.insert("k".into(), json!(k));
        entry.insert("rows_per_module".into(), json!(n * k / m));
        entry.insert("modular_s".into(), json!(modular));
        entry.insert("dense_s".into(), json!(dense));
        entry.insert("efficiency".into(), json!(dense / modular));
        if let Some(&naive) = t.get("naive") {
            entry.insert("naive_s".into(), json!(naive));
            entry.insert("naive_efficiency".into(), json!(dense / naive));
        }
        if let Some(pair) = paired.get(format!("n{n}_m{m}_k{k}").as_str()) {
            entry.insert("paired_efficiency".into(), pair["median"].clone());
            entry.insert("paired_q1".into(), pair["q1"].clone());
            entry.insert("paired_q3".into(), pair["q3"].clone());
            entry.insert("paired_rounds".into(), pair["rounds"].clone());
            // The memory floor (see benches/src/floor.rs), absent from older side files.
            for field in ["floor_s", "floor_share"] {
                if pair[field].is_number() {
                    entry.insert(field.into(), pair[field].clone());
                }
            }
            // Against the strongest peer measured: MKL where it ran, else numpy.
            let mut best = None;
            for peer in PEERS {
                let efficiency = &pair[&format!("efficiency_vs_{peer}")];
                if efficiency.is_number() {
                    entry.insert(
                        format!("{peer}_dense_s"),
                        pair[&format!("{peer}_dense_s")].clone(),
                    );
                    entry.insert(format!("efficiency_vs_{peer}"), efficiency.clone());
                    let bound = pair[&format!("floor_efficiency_vs_{peer}")].clone();
                    if bound.is_number() {
                        entry.insert(format!("floor_efficiency_vs_{peer}"), bound.clone());
                    }
                    best = best.or(Some((peer, efficiency.clone(), bound)));
                }
            }
            if let Some((peer, efficiency, bound)) = best {
                entry.insert("best_dense_peer".into(), json!(peer));
                entry.insert("efficiency_vs_best_peer".into(), efficiency);
                if bound.is_number() {
                    entry.insert("floor_efficiency_vs_best_peer".into(), bound);
                }
            }
        }
        entries.push(entry);
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e["rows_per_module"].as_u64()));
    let scaling: Vec<(usize, f64)> = [4, 16, 64]
        .into_iter()
        .filter_map(|m| {
            times
                .get(&[4096, m, 2])
                .and_then(|t| t.get("modular"))
                .map(|&s| (m, s))
        })
        .collect();
    let mut fields = Map::new();
    if let Some(side) = &side {
        fields.insert("peers".into(), side["peers"].clone());
    }
    if let Some(&(_, base)) = scaling.first() {
        let series: Vec<Value> = scaling.iter().map(|&(m, s)| json!({"n": 4096, "k": 2, "m": m, "modular_s": s, "relative_to_m4": s / base})).collect();
        fields.insert("scaling_m".into(), Value::Array(series));
    }
    Ok(Figures {
        fields,
        entries,
        columns: vec![
            "n",
            "m",
            "k",
            "rows_per_module",
            "modular_s",
            "dense_s",
            "naive_s",
            "efficiency",
            "paired_efficiency",
            "naive_efficiency",
            "best_dense_peer",
            "efficiency_vs_best_peer",
            "floor_share",
            "floor_efficiency_vs_best_peer",
        ],
    })
}

/// A side file of paired rounds (see benches/benches/{gemm,modular}.rs), or `None` when it
/// is missing or predates this run's measurements (a filtered run that skipped the pairs), so
/// that stale pairs are never reported as fresh.
fn read_side(path: &Path, measurements: &[Measurement]) -> Result<Option<Value>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let newest = measurements.iter().filter_map(|m| m.written).max();
    if let (Some(written), Some(newest)) = (written, newest)
        && written < newest
    {
        return Ok(None);
    }
    let side = read_json(path)?;
    if !side["entries"].is_array() {
        return Err(format!(
            "{}: expected an object with an `entries` array",
            path.display()
        ));
    }
    Ok(Some(side))
}

/// `em.json`: the time of one E-step and one M-step on the same batch and model, and their
/// ratio (the issue's target is at most 4 with S = 10).
fn em_figures(_: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let mut by_config: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for m in measurements {
        let rest = m.id.strip_prefix("em/").and_then(|r| r.split_once('/')).ok_or_else(|| {
            format!("unexpected benchmark id `{}` in the em bench; expected em/<e_step|m_step>/<config>", m.id)
        })?;
        by_config
            .entry(rest.1.to_string())
            .or_default()
            .insert(rest.0.to_string(), m.seconds);
    }
    let mut entries = Vec::new();
    for (config, t) in &by_config {
        let (Some(&e), Some(&m)) = (t.get("e_step"), t.get("m_step")) else {
            continue;
        };
        let mut entry = Map::new();
        entry.insert("config".into(), json!(config));
        entry.insert("e_step_s".into(), json!(e));
        entry.insert("m_step_s".into(), json!(m));
        entry.insert("ratio".into(), json!(e / m));
        entries.push(entry);
    }
    Ok(Figures {
        fields: Map::new(),
        entries,
        columns: vec!["config", "e_step_s", "m_step_s", "ratio"],
    })
}

/// The machine the figures come from: CPU model, usable cores, OS, compiler, and how busy it
/// was.
pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    // `nproc` honours CPU affinity and is what a reader would type to compare machines; the
    // standard library's estimate (which also honours cgroup quotas) is the fallback.
    let nproc = command_output("nproc", &[])
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()));
    let rustc = command_output("rustc", &["--version"]);
    // The machines are shared: a load average near or above `nproc` when the run starts means
    // other work competed for the cores, and the 2-thread figures (numpy's most of all, since
    // OpenBLAS threads spin while waiting) are not to be trusted.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
    json!({
        "cpu_model": cpu,
        "nproc": nproc,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "rustc": rustc,
        "load_average_1m_at_start": load,
    })
}

pub(crate) fn machine_line(machine: &Value) -> String {
    // Imported figures (`--import`) may come from a machine with a GPU, which it names.
    let gpu = machine["gpu"]
        .as_str()
        .map_or(String::new(), |gpu| format!(", GPU {gpu}"));
    format!(
        "{} x{}{gpu}, load average {} at start",
        machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        machine["nproc"],
        machine["load_average_1m_at_start"]
    )
}

/// Trimmed stdout of a command, or `None` if it cannot run or fails.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Prints `entries` as an aligned table with the given columns.
pub(crate) fn print_table(columns: &[&str], entries: &[Map<String, Value>]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| columns.iter().map(|c| format_cell(e.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        println!("  {}", padded.join("  "));
    };
    line(columns.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A JSON value for the table: integers as they are, floats to about four significant digits.
fn format_cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::Number(n)) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            match x.abs() {
                a if a >= 100.0 => format!("{x:.1}"),
                a if a >= 0.1 => format!("{x:.3}"),
                _ => format!("{x:.3e}"),
            }
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `data.json`: loader times from ids `data/{source}/{task}` (see benches/benches/data.rs),
/// each with its target from the data issue and whether the data was real or generated.
fn data_figures(_: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let mut fields = Map::new();
    let mut entries = Vec::new();
    for m in measurements {
        let parts: Vec<&str> = m.id.split('/').collect();
        let [_, source, task] = parts[..] else {
            return Err(format!(
                "unexpected benchmark id `{}` in the data bench; expected data/<source>/<task> (see benches/benches/data.rs)",
                m.id
            ));
        };
        // Targets: PTB load + vocabulary + batchify under 0.5 s, Fashion-MNIST decode under 1 s.
        let (key, target_s) = if source.ends_with("ptb") {
            ("ptb_load_vocab_batchify_s", 0.5)
        } else {
            ("fashion_mnist_decode_s", 1.0)
        };
        let generated = source.starts_with("generated-");
        if !generated {
            fields.insert(key.into(), json!(m.seconds));
        }
        let mut entry = Map::new();
        entry.insert("id".into(), json!(m.id));
        entry.insert("source".into(), json!(source));
        entry.insert("task".into(), json!(task));
        entry.insert("real_data".into(), json!(!generated));
        entry.insert("seconds".into(), json!(m.seconds));
        entry.insert("seconds_ci".into(), json!([m.seconds_ci.0, m.seconds_ci.1]));
        entry.insert("target_s".into(), json!(target_s));
        entry.insert("within_target".into(), json!(m.seconds < target_s));
        entries.push(entry);
    }
    Ok(Figures {
        fields,
        entries,
        columns: vec!["source", "task", "seconds", "target_s", "within_target"],
    })
}

/// `wgpu.json`: GFLOP/s of the wgpu backend's matmul (`wgpu/matmul/{s}x{s}x{s}`) and grouped
/// products (`wgpu/grouped/n{n}_m{m}_k{k}`, d = 512), see benches/benches/wgpu.rs, with the
/// adapter the bench recorded in `target/bench/wgpu-adapter.json`. A software adapter (device
/// type `cpu`, e.g. lavapipe) is labelled as such: its figures are CPU timings, not GPU ones.
fn wgpu_figures(context: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let adapter_path = context.side_files.join("wgpu-adapter.json");
    let adapter = read_json(&adapter_path)?;
    let software = adapter["software"].as_bool().unwrap_or(false)
        || adapter["device_type"].as_str() == Some("cpu");
    let mut fields = Map::new();
    fields.insert("adapter".into(), adapter.clone());
    fields.insert("device_type".into(), adapter["device_type"].clone());
    fields.insert(
        "figures_are".into(),
        json!(if software {
            "software adapter: CPU timings of a software Vulkan driver, not GPU figures"
        } else {
            "GPU"
        }),
    );
    let mut entries = Vec::new();
    for m in measurements {
        let parts: Vec<&str> = m.id.split('/').collect();
        let (kind, config) = match parts[..] {
            ["wgpu", kind @ ("matmul" | "grouped"), config] => (kind, config),
            _ => {
                return Err(format!(
                    "unexpected benchmark id `{}` in the wgpu bench; expected wgpu/matmul/<s>x<s>x<s> or wgpu/grouped/n<n>_m<m>_k<k> (see benches/benches/wgpu.rs)",
                    m.id
                ));
            }
        };
        let Some((_, flops)) = &m.throughput else {
            return Err(format!("{}: the bench declares no FLOP throughput", m.id));
        };
        let mut entry = Map::new();
        entry.insert("op".into(), json!(kind));
        entry.insert("config".into(), json!(config));
        entry.insert("seconds".into(), json!(m.seconds));
        entry.insert("gflops".into(), json!(*flops as f64 / m.seconds * 1e-9));
        entry.insert("software_adapter".into(), json!(software));
        entries.push(entry);
    }
    Ok(Figures {
        fields,
        entries,
        columns: vec!["op", "config", "seconds", "gflops", "software_adapter"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_ids_round_trip() {
        assert_eq!(
            parse_gemm_id("cpu/tn/t2/4096x512x512"),
            Some(GemmShape {
                op: "tn".into(),
                threads: 2,
                rows: 4096,
                k: 512,
                n: 512
            })
        );
        assert_eq!(parse_gemm_id("cpu/nn/t2/4096x512"), None);
        assert_eq!(parse_gemm_id("cpu/nt/t2/1x2x3x4"), None);
        assert_eq!(parse_gemm_id("cpu/matmul/t2/1x2x3"), None);
        assert_eq!(parse_gemm_id("wgpu/nn/t2/1x2x3"), None);
    }

    #[test]
    fn options_split_names_flags_and_criterion_args() {
        let args: Vec<String> = [
            "gemm",
            "--no-peers",
            "--python",
            "py",
            "--",
            "t1",
            "--quick",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let options = Options::parse(&args).unwrap();
        assert_eq!(options.names, ["gemm"]);
        assert!(!options.peers);
        assert_eq!(options.python, Some(PathBuf::from("py")));
        assert_eq!(options.criterion_args, ["t1", "--quick"]);
        assert!(Options::parse(&["--bogus".to_owned()]).is_err());
        assert!(Options::parse(&["--import".to_owned()]).is_err());
        assert!(Options::parse(&["--python".to_owned()]).is_err());
    }

    #[test]
    fn side_files_are_read_only_when_newer_than_the_measurements() {
        let dir = std::env::temp_dir().join(format!("xtask-paired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("modular-paired.json");
        std::fs::write(
            &path,
            r#"{"entries": [{"config": "n128_m16_k2", "rounds": 31, "median": 0.6}]}"#,
        )
        .unwrap();
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        let measured = |at: SystemTime| Measurement {
            id: "modular/modular/n128_m16_k2".into(),
            seconds: 1.0,
            seconds_ci: (1.0, 1.0),
            throughput: None,
            written: Some(at),
        };
        let earlier = written - std::time::Duration::from_secs(60);
        let later = written + std::time::Duration::from_secs(60);
        let fresh = read_side(&path, &[measured(earlier)]).unwrap().unwrap();
        assert_eq!(fresh["entries"][0]["median"], json!(0.6));
        assert!(read_side(&path, &[measured(later)]).unwrap().is_none());
        assert!(read_side(&dir.join("absent.json"), &[]).unwrap().is_none());
        std::fs::write(&path, r#"[{"config": "n128_m16_k2"}]"#).unwrap();
        let err = read_side(&path, &[measured(earlier)]).unwrap_err();
        assert!(err.contains("modular-paired.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn import_reads_results_written_elsewhere() {
        let dir = std::env::temp_dir().join(format!("xtask-import-{}", std::process::id()));
        let new = dir.join("criterion/wgpu/matmul/8x8x8/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id": "wgpu/matmul/8x8x8", "throughput": {"Elements": 1024}}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean": {"point_estimate": 2000.0,
                "confidence_interval": {"lower_bound": 1000.0, "upper_bound": 3000.0}}}"#,
        )
        .unwrap();
        let found = imported_measurements(&dir, "wgpu").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "wgpu/matmul/8x8x8");
        assert!((found[0].seconds - 2e-6).abs() < 1e-12);
        assert_eq!(found[0].throughput, Some(("Elements".to_owned(), 1024)));
        let missing = imported_measurements(&dir, "modular").unwrap_err();
        assert!(missing.contains("CARGO_TARGET_DIR"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
