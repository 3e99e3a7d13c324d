//! `sparse.json`: the sparse engine's paired measurements (benches/benches/sparse.rs) as one
//! entry per point, the crossover sparsity per row count, the speed-ups at 90, 95 and 99%,
//! the targets checked one by one, and a figure (`sparse.svg`: speed-up against
//! sparsity per row count, dense = 1).

use serde_json::{Map, Value, json};

use crate::bench::{Context, Figures, Measurement};

/// Fields of an entry, as the issue names them (then the derived ones).
const TIMES: [&str; 8] = [
    "sparse_forward_s",
    "sparse_forward_build_s",
    "dense_forward_s",
    "sparse_fwd_bwd_s",
    "dense_fwd_bwd_s",
    "sparse_forward_t1_s",
    "sprs_s",
    "scipy_s",
];

/// Derived ratio fields and the paired ratio each comes from.
const RATIOS: [(&str, &str); 7] = [
    ("speedup_forward", "forward"),
    ("speedup_forward_build", "forward_build"),
    ("speedup_fwd_bwd", "fwd_bwd"),
    ("vs_sprs", "sprs_vs_sparse"),
    ("vs_sprs_t1", "sprs_vs_sparse_t1"),
    ("vs_scipy", "scipy_vs_sparse"),
    ("vs_scipy_t1", "scipy_vs_sparse_t1"),
];

/// Reads `sparse-paired.json` and builds the figures; fails when it is missing or older than
/// this run's criterion results (a filtered run that skipped the pairs).
pub fn figures(context: &Context, measurements: &[Measurement]) -> Result<Figures, String> {
    let path = context.side_files.join("sparse-paired.json");
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest = measurements.iter().filter_map(|m| m.written).max();
    if written.is_none() || written < newest {
        return Err(format!(
            "{} is missing or older than this run's criterion results; run the bench \
             unfiltered (`cargo xtask bench sparse`)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let paired: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let bandwidth = paired["read_bandwidth_4mib"].as_f64();
    let points = paired["points"]
        .as_array()
        .ok_or_else(|| format!("{}: no `points`", path.display()))?;
    let entries: Vec<Map<String, Value>> = points.iter().map(|p| entry(p, bandwidth)).collect();

    let mut fields = Map::new();
    for key in [
        "threads",
        "rounds",
        "isa",
        "scipy",
        "sprs",
        "read_bandwidth_4mib",
        "read_bandwidth_256mib",
    ] {
        fields.insert(key.into(), paired[key].clone());
    }
    fields.insert("crossover".into(), crossovers(&entries));
    fields.insert("speedups".into(), speedups(&entries));
    fields.insert("targets".into(), targets(&entries));
    fields.insert(
        "criterion".into(),
        Value::Array(
            measurements
                .iter()
                .map(|m| json!({"id": m.id, "seconds": m.seconds}))
                .collect(),
        ),
    );
    let svg = context.side_files.join("sparse.svg");
    std::fs::write(&svg, plot(&entries))
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    fields.insert("figure".into(), json!(svg.display().to_string()));
    Ok(Figures {
        fields,
        entries,
        columns: vec![
            "pattern",
            "n",
            "sparsity",
            "dense_forward_s",
            "speedup_forward",
            "speedup_forward_build",
            "speedup_fwd_bwd",
            "vs_sprs",
            "vs_scipy",
            "vs_sprs_t1",
            "vs_scipy_t1",
            "of_bound",
        ],
    })
}

/// One point's entry: the times, the paired ratios and, for block points, the bound.
fn entry(p: &Value, bandwidth: Option<f64>) -> Map<String, Value> {
    let mut e = Map::new();
    for key in ["n", "sparsity", "pattern", "density"] {
        e.insert(key.into(), p[key].clone());
    }
    for key in TIMES {
        e.insert(key.into(), p[key].clone());
    }
    for (field, ratio) in RATIOS {
        e.insert(field.into(), p["ratios"][ratio].clone());
    }
    // Block sparsity's bound: min(1 / density, dense time over the memory floor).
    if let (Some(bytes), Some(bw), Some(dense), Some(density), Some(speedup)) = (
        p["floor_bytes"].as_f64(),
        bandwidth,
        p["dense_forward_s"].as_f64(),
        p["density"].as_f64(),
        p["ratios"]["forward"].as_f64(),
    ) {
        let ideal = if density > 0.0 {
            1.0 / density
        } else {
            f64::INFINITY
        };
        let floor = dense / (bytes / bw);
        let bound = ideal.min(floor);
        e.insert("ideal".into(), json!(ideal.is_finite().then_some(ideal)));
        e.insert("floor_speedup".into(), json!(floor));
        e.insert("floor_binds".into(), json!(floor < ideal));
        e.insert("of_bound".into(), json!(speedup / bound));
    }
    e
}

fn num(e: &Map<String, Value>, key: &str) -> Option<f64> {
    e.get(key).and_then(Value::as_f64)
}

/// Entries of one pattern and row count, by sparsity.
fn series<'a>(
    entries: &'a [Map<String, Value>],
    pattern: &str,
    n: u64,
) -> Vec<&'a Map<String, Value>> {
    let mut s: Vec<_> = entries
        .iter()
        .filter(|e| e["pattern"] == pattern && e["n"].as_u64() == Some(n))
        .collect();
    s.sort_by(|a, b| num(a, "sparsity").partial_cmp(&num(b, "sparsity")).unwrap());
    s
}

/// Row counts present, ascending.
fn rows(entries: &[Map<String, Value>]) -> Vec<u64> {
    let mut n: Vec<u64> = entries.iter().filter_map(|e| e["n"].as_u64()).collect();
    n.sort_unstable();
    n.dedup();
    n
}

/// The sparsity at which `field` first reaches 1, interpolated linearly between the measured
/// levels (null if it never does).
fn crossing(points: &[&Map<String, Value>], field: &str) -> Value {
    let mut last: Option<(f64, f64)> = None;
    for p in points {
        let (Some(s), Some(r)) = (num(p, "sparsity"), num(p, field)) else {
            continue;
        };
        if r >= 1.0 {
            return match last {
                None => json!(s),
                Some((s0, r0)) => json!(s0 + (s - s0) * (1.0 - r0) / (r - r0)),
            };
        }
        last = Some((s, r));
    }
    Value::Null
}

/// Crossover sparsity per pattern and row count, with and without the build.
fn crossovers(entries: &[Map<String, Value>]) -> Value {
    let mut out = Vec::new();
    for pattern in ["random", "block"] {
        for n in rows(entries) {
            let s = series(entries, pattern, n);
            out.push(json!({
                "pattern": pattern,
                "n": n,
                "forward_build": crossing(&s, "speedup_forward_build"),
                "forward": crossing(&s, "speedup_forward"),
                "fwd_bwd": crossing(&s, "speedup_fwd_bwd"),
            }));
        }
    }
    Value::Array(out)
}

/// The speed-ups at 90, 95 and 99% per pattern and row count.
fn speedups(entries: &[Map<String, Value>]) -> Value {
    let out: Vec<Value> = entries
        .iter()
        .filter(|e| {
            [0.9, 0.95, 0.99]
                .iter()
                .any(|&s| num(e, "sparsity") == Some(s))
        })
        .map(|e| {
            json!({
                "pattern": e["pattern"], "n": e["n"], "sparsity": e["sparsity"],
                "forward": e["speedup_forward"], "forward_build": e["speedup_forward_build"],
                "fwd_bwd": e["speedup_fwd_bwd"], "of_bound": e.get("of_bound"),
            })
        })
        .collect();
    Value::Array(out)
}

/// The targets, each with what was measured and whether it was met.
fn targets(entries: &[Map<String, Value>]) -> Value {
    let at = |pattern: &str, n: u64, s: f64| {
        entries.iter().find(|e| {
            e["pattern"] == pattern && e["n"].as_u64() == Some(n) && num(e, "sparsity") == Some(s)
        })
    };
    let mut out = Vec::new();
    let crossover = crossing(&series(entries, "random", 256), "speedup_forward_build");
    out.push(json!({
        "target": "random, n = 256: crossover (build included) at or below 60% zeros",
        "measured": crossover,
        "met": crossover.as_f64().is_some_and(|c| c <= 0.6),
    }));
    if let Some(e) = at("random", 256, 0.95) {
        for (what, field, want) in [
            ("forward (build included)", "speedup_forward_build", 5.0),
            ("forward (prebuilt)", "speedup_forward", 5.0),
            ("forward+backward", "speedup_fwd_bwd", 2.5),
        ] {
            out.push(json!({
                "target": format!("random, n = 256, 95%: {what} at least {want}x dense"),
                "measured": e[field],
                "met": num(e, field).is_some_and(|r| r >= want),
            }));
        }
    }
    for e in entries.iter().filter(|e| {
        e["pattern"] == "block" && [0.9, 0.95].iter().any(|&s| num(e, "sparsity") == Some(s))
    }) {
        out.push(json!({
            "target": format!("block, n = {}, {}: at least 0.6 of min(ideal, floor)", e["n"], e["sparsity"]),
            "measured": e.get("of_bound"),
            "floor_binds": e.get("floor_binds"),
            "met": num(e, "of_bound").is_some_and(|r| r >= 0.6),
        }));
    }
    for peer in ["vs_sprs", "vs_scipy", "vs_sprs_t1", "vs_scipy_t1"] {
        let relevant: Vec<&Map<String, Value>> = entries
            .iter()
            .filter(|e| e["n"].as_u64() >= Some(32) && num(e, "sparsity") >= Some(0.5))
            .collect();
        let worst = relevant
            .iter()
            .filter_map(|e| num(e, peer))
            .min_by(f64::total_cmp);
        let missed: Vec<Value> = relevant
            .iter()
            .filter(|e| num(e, peer).is_some_and(|r| r < 3.0))
            .map(|e| json!([e["pattern"], e["n"], e["sparsity"], e[peer]]))
            .collect();
        out.push(json!({
            "target": format!("{peer}: at least 3x at every point with n >= 32 and >= 50% zeros"),
            "measured_worst": worst,
            "missed": missed,
            "met": worst.is_some_and(|w| w >= 3.0),
        }));
    }
    Value::Array(out)
}

/// An SVG line plot of the forward speed-up (build included) against sparsity: one line per
/// row count, solid for random and dashed for block patterns, log scale, dense = 1.
fn plot(entries: &[Map<String, Value>]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 170.0, 30.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let (ymin, ymax) = (0.1f64.log10(), 1000f64.log10());
    let x = |s: f64| left + s * pw;
    let y = |r: f64| top + ph * (1.0 - (r.clamp(0.1, 1000.0).log10() - ymin) / (ymax - ymin));
    let colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    for r in [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0] {
        let stroke = if r == 1.0 { "#000" } else { "#ddd" };
        let (x1, yr, tx, ty) = (left + pw, y(r), left - 6.0, y(r) + 4.0);
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{x1}\" y1=\"{yr:.1}\" y2=\"{yr:.1}\" stroke=\"{stroke}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{r}</text>\n"
        );
    }
    for s in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}%</text>\n",
            x(s),
            top + ph + 18.0,
            (s * 100.0) as u32
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">zeros in the activation (k = m = 1024)</text>\n\
         <text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">\
         speed-up over dense GEMM, forward incl. build</text>\n",
        left + pw / 2.0,
        h - 8.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let mut legend = 0.0;
    for (pattern, dash) in [("random", ""), ("block", " stroke-dasharray=\"6 4\"")] {
        for (i, n) in rows(entries).into_iter().enumerate() {
            let pts: Vec<String> = series(entries, pattern, n)
                .iter()
                .filter_map(|e| {
                    Some(format!(
                        "{:.1},{:.1}",
                        x(num(e, "sparsity")?),
                        y(num(e, "speedup_forward_build")?)
                    ))
                })
                .collect();
            let colour = colours[i % colours.len()];
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
                pts.join(" ")
            );
            let ly = top + 10.0 + legend;
            svg += &format!(
                "<line x1=\"{0}\" x2=\"{1}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\
                 <text x=\"{2}\" y=\"{3}\">{pattern}, n = {n}</text>\n",
                left + pw + 12.0,
                left + pw + 40.0,
                left + pw + 46.0,
                ly + 4.0
            );
            legend += 18.0;
        }
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\">dense = 1</text>\n</svg>\n",
        left + pw + 12.0,
        top + 20.0 + legend
    );
    svg
}
