//! `cargo xtask dist-model`: projects the expert-parallel layer's step time and scaling
//! efficiency to P = 8..1024 ranks from the compute time `cargo xtask bench dist` measured at
//! one rank and a network's bandwidth and latency (an alpha-beta model; docs/distributed.md
//! says where it stops being credible).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::bench::print_table;
use crate::{target_dir, workspace_root};

/// Rank counts of the projection.
const RANKS: [u64; 8] = [8, 16, 32, 64, 128, 256, 512, 1024];

/// All-to-alls per step: counts, rows out and results back forward; two backward.
const EXCHANGES: f64 = 5.0;

/// A network: its name, bandwidth per rank (bytes per second) and per-message latency
/// (seconds).
struct Network {
    name: String,
    bandwidth: f64,
    latency: f64,
}

/// What the command reads and assumes.
struct Options {
    input: PathBuf,
    output: Option<PathBuf>,
    networks: Vec<Network>,
    speedups: Vec<f64>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut input = target_dir().join("bench").join("dist.json");
        let mut output = None;
        let (mut bandwidth, mut latency, mut speedup) = (None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{flag} needs a value"))
                    .cloned()
            };
            let number = |v: String| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| format!("{flag} {v}: give a positive number"))
            };
            match flag.as_str() {
                "--input" => input = workspace_root().join(value()?),
                "--json" => output = Some(workspace_root().join(value()?)),
                "--bandwidth-gbs" => bandwidth = Some(number(value()?)?),
                "--latency-us" => latency = Some(number(value()?)?),
                "--speedup" => speedup = Some(number(value()?)?),
                _ => return Err(format!("unknown flag `{flag}`")),
            }
        }
        let networks = match (bandwidth, latency) {
            (Some(b), Some(l)) => vec![Network {
                name: format!("{b} GB/s, {l} us"),
                bandwidth: b * 1e9,
                latency: l * 1e-6,
            }],
            (None, None) => vec![
                // Assumed figures of two common fabrics, per rank, not measurements.
                Network {
                    name: "100 Gb/s InfiniBand-class (12.5 GB/s, 2 us)".into(),
                    bandwidth: 12.5e9,
                    latency: 2e-6,
                },
                Network {
                    name: "25 Gb/s Ethernet (3.125 GB/s, 25 us)".into(),
                    bandwidth: 3.125e9,
                    latency: 25e-6,
                },
            ],
            _ => return Err("give --bandwidth-gbs and --latency-us together".into()),
        };
        Ok(Options {
            input,
            output,
            networks,
            // The measured core, and a device a hundred times faster per rank.
            speedups: speedup.map_or_else(|| vec![1.0, 100.0], |s| vec![s]),
        })
    }
}

/// A configuration's one-rank measurement.
struct Measured {
    n: u64,
    m: u64,
    k: u64,
    d: u64,
    compute_s: f64,
}

/// The one-rank entries of `cargo xtask bench dist`'s JSON.
fn measured(text: &str, path: &str) -> Result<Vec<Measured>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("{path}: {e}"))?;
    let entries = root["entries"].as_array().ok_or_else(|| {
        format!("{path}: no `entries` array; write it with `cargo xtask bench dist`")
    })?;
    let field = |e: &Value, name: &str| {
        e[name]
            .as_u64()
            .ok_or_else(|| format!("{path}: an entry lacks the integer field `{name}`"))
    };
    let mut out = Vec::new();
    for e in entries {
        if field(e, "ranks")? != 1 {
            continue;
        }
        let compute_s = e["compute_s"]
            .as_f64()
            .filter(|c| *c > 0.0)
            .ok_or_else(|| format!("{path}: an entry's `compute_s` is not a positive number"))?;
        out.push(Measured {
            n: field(e, "n")?,
            m: field(e, "m")?,
            k: field(e, "k")?,
            d: field(e, "d")?,
            compute_s,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "{path}: no one-rank (`ranks`: 1) entry to project from"
        ));
    }
    Ok(out)
}

/// One projected row: rank `p` holds the `n` rows of the configuration (fixed per-rank
/// batch), routes them uniformly over `max(M, p)` modules (at least one per rank), and runs
/// the measured one-rank compute (divided by `speedup`); the exchange sends, per rank, the
/// `(d_in + d_out)` values of each of its remote pairs and of each remote pair routed to it,
/// plus one count per module of the other ranks, in five all-to-alls of `p - 1` messages each.
fn project(c: &Measured, net: &Network, speedup: f64, p: u64) -> Value {
    let pf = p as f64;
    let remote = (c.n * c.k) as f64 * (pf - 1.0) / pf;
    let modules = c.m.max(p) as f64;
    let bytes = 2.0 * remote * (2 * c.d) as f64 * 4.0 + 4.0 * modules * (pf - 1.0) / pf;
    let compute = c.compute_s / speedup;
    let exchange = EXCHANGES * (pf - 1.0) * net.latency + bytes / net.bandwidth;
    let step = compute + exchange;
    json!({
        "n_per_rank": c.n, "m": c.m, "k": c.k, "d": c.d,
        "network": net.name, "speedup": speedup, "ranks": p,
        "bytes_per_rank": bytes.round(),
        "message_bytes": (bytes / EXCHANGES / (pf - 1.0)).round(),
        "compute_s": compute, "exchange_s": exchange, "step_s": step,
        "efficiency": compute / step,
    })
}

/// Runs the command.
pub fn run(args: &[String]) -> Result<(), String> {
    let options = Options::parse(args)?;
    let path = options.input.display().to_string();
    let text = std::fs::read_to_string(&options.input)
        .map_err(|e| format!("{path}: {e}; run `cargo xtask bench dist` first or pass --input"))?;
    let configs = measured(&text, &path)?;
    let mut rows = Vec::new();
    for net in &options.networks {
        for &speedup in &options.speedups {
            for c in &configs {
                rows.extend(RANKS.iter().map(|&p| project(c, net, speedup, p)));
            }
        }
    }
    let entries: Vec<_> = rows.iter().filter_map(|r| r.as_object().cloned()).collect();
    print_table(
        &[
            "network",
            "speedup",
            "n_per_rank",
            "m",
            "k",
            "ranks",
            "compute_s",
            "exchange_s",
            "message_bytes",
            "efficiency",
        ],
        &entries,
    );
    if let Some(out) = options.output {
        let object = json!({
            "model": "dist-model",
            "input": path,
            "rows": rows,
        });
        let text = serde_json::to_string_pretty(&object).expect("JSON values always serialise");
        std::fs::write(&out, text + "\n").map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}
