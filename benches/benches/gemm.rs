//! f32 GEMM throughput of the [`Cpu`] backend on a layer's three products, with Intel MKL and
//! numpy/OpenBLAS timed in the same run (see [`modula_benches::peer`]).
//!
//! The products of a `[rows x 512]` batch through a `512 x 512` layer: `nn` is the forward
//! `X W`, `tn` the weight gradient `X^T dY` (both operands tall, `rows` deep) and `nt` the
//! input gradient `dY W^T`, for rows from 1 to 4096 on one and two threads.
//!
//! Benchmark ids are `cpu/{op}/t{threads}/{rows}x{k}x{n}`. Criterion times each one; then
//! every configuration is timed again in paired rounds beside the peers (and, on two threads,
//! beside modula on one), whose medians go to `target/bench/gemm-paired.json`.
//! `cargo xtask bench gemm` joins both into `target/bench/gemm.json`, so keep the formats in
//! step with `xtask/src/bench.rs`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use modula_benches::peer::{
    Peer, SETTLE, Subject, median, median_ratio, paired_rounds, time_round,
};
use modula_benches::{bench_data, gemm_flops};
use modula_cpu::Cpu;
use modula_tensor::{Backend, Transpose};
use serde_json::{Map, Value, json};

/// Rows of the batch: one example, the few rows of routed per-module blocks and recurrent
/// steps, a square product and a large batch.
const ROWS: [usize; 8] = [1, 8, 16, 32, 64, 128, 512, 4096];
/// The layer's input and output widths.
const K: usize = 512;
const N: usize = 512;
/// The products, by their names in the figures.
const OPS: [&str; 3] = ["nn", "tn", "nt"];
/// Paired rounds per configuration, and the shortest round.
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(30);

/// The operands of one product on one backend, and the call that computes it.
struct Product {
    a: <Cpu as Backend>::Tensor,
    ta: Transpose,
    b: <Cpu as Backend>::Tensor,
    tb: Transpose,
    c: <Cpu as Backend>::Tensor,
}

impl Product {
    fn new(cpu: &Cpu, op: &str, rows: usize) -> Product {
        let tensor =
            |shape: [usize; 2], seed| cpu.upload(shape, &bench_data(shape[0] * shape[1], seed));
        let (a, ta, b, tb, c) = match op {
            "nn" => ([rows, K], Transpose::No, [K, N], Transpose::No, [rows, N]),
            "tn" => ([rows, K], Transpose::Yes, [rows, N], Transpose::No, [K, N]),
            _ => ([rows, N], Transpose::No, [K, N], Transpose::Yes, [rows, K]),
        };
        Product {
            a: tensor(a, 1),
            ta,
            b: tensor(b, 2),
            tb,
            c: cpu.zeros(c),
        }
    }

    fn run(&mut self, cpu: &Cpu) {
        cpu.matmul(
            1.0,
            black_box(&self.a),
            self.ta,
            black_box(&self.b),
            self.tb,
            0.0,
            &mut self.c,
        );
        // The CPU backend is synchronous, but a device backend would only queue the work;
        // synchronising keeps the timing honest for every backend.
        cpu.synchronize().expect("CPU backend cannot fail");
    }
}

fn gemm(c: &mut Criterion) {
    let cpus = [Cpu::with_threads(1), Cpu::with_threads(2)];
    // The configurations that passed the command line's filter (criterion calls a closure only
    // for those), which the paired rounds then cover too.
    let mut ran = Vec::new();
    for op in OPS {
        let mut group = c.benchmark_group(format!("cpu/{op}"));
        // 48 configurations: shorter than the xtask's default settings, the paired rounds
        // below being the figures that compare.
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for (t, cpu) in cpus.iter().enumerate() {
            for rows in ROWS {
                let mut product = Product::new(cpu, op, rows);
                group.throughput(Throughput::Elements(gemm_flops(rows, K, N)));
                let id = BenchmarkId::new(format!("t{}", t + 1), format!("{rows}x{K}x{N}"));
                group.bench_function(id, |bench| {
                    ran.push((t + 1, op, rows));
                    bench.iter(|| product.run(cpu))
                });
            }
        }
        group.finish();
    }
    // Pairs only make sense when criterion is measuring, not when it merely checks that the
    // benches run (`--test`), lists them or profiles one.
    if std::env::args().any(|a| ["--test", "--list", "--profile-time"].contains(&a.as_str())) {
        return;
    }
    let mut entries = Vec::new();
    let mut about = Map::new();
    ran.dedup();
    for threads in 1..=cpus.len() {
        if !ran.iter().any(|&(t, _, _)| t == threads) {
            continue;
        }
        let mut peers = Peer::start_all(threads);
        for peer in &peers {
            about.insert(format!("{}_t{threads}", peer.name), peer.about.clone());
        }
        for &(_, op, rows) in ran.iter().filter(|&&(t, _, _)| t == threads) {
            eprintln!("bench: paired rounds of {op} t{threads} {rows}x{K}x{N}");
            entries.push(paired(&cpus, threads, op, rows, &mut peers));
        }
    }
    modula_benches::write_side_file(
        "gemm-paired.json",
        &json!({"rounds": ROUNDS, "round_s": ROUND.as_secs_f64(), "peers": about, "entries": entries}),
    );
}

/// One configuration's paired rounds: modula on `threads` threads, each peer on as many, and
/// modula on one thread beside two. Medians of seconds per call and of per-round ratios.
fn paired(cpus: &[Cpu; 2], threads: usize, op: &str, rows: usize, peers: &mut [Peer]) -> Value {
    let cpu = &cpus[threads - 1];
    let mut ours = Product::new(cpu, op, rows);
    let mut subjects: Vec<Subject<'_>> =
        vec![Box::new(|min| time_round(min, &mut || ours.run(cpu)))];
    if threads > 1 {
        let mut one = Product::new(&cpus[0], op, rows);
        subjects.push(Box::new(move |min| {
            time_round(min, &mut || one.run(&cpus[0]))
        }));
    }
    let names: Vec<&str> = peers.iter().map(|p| p.name).collect();
    for peer in peers.iter_mut() {
        subjects.push(Box::new(move |min| peer.time(op, rows, K, N, min)));
    }
    let seconds = paired_rounds(&mut subjects, ROUNDS, ROUND, SETTLE);
    drop(subjects);
    let mut entry = Map::new();
    entry.insert("op".into(), json!(op));
    entry.insert("rows".into(), json!(rows));
    entry.insert("k".into(), json!(K));
    entry.insert("n".into(), json!(N));
    entry.insert("threads".into(), json!(threads));
    entry.insert("seconds".into(), json!(median(&seconds[0])));
    let peer_rounds = &seconds[if threads > 1 { 2 } else { 1 }..];
    if threads > 1 {
        entry.insert("t1_seconds".into(), json!(median(&seconds[1])));
        entry.insert(
            "speedup_over_t1".into(),
            json!(median_ratio(&seconds[1], &seconds[0])),
        );
    }
    for (name, rounds) in names.iter().zip(peer_rounds) {
        entry.insert(format!("{name}_seconds"), json!(median(rounds)));
        entry.insert(
            format!("ratio_vs_{name}"),
            json!(median_ratio(rounds, &seconds[0])),
        );
    }
    Value::Object(entry)
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    gemm(&mut criterion);
    criterion.final_summary();
}
