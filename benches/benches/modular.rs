//! Forward+backward of the modular linear layer (`d_in = d_out = 512`) against one dense GEMM
//! of the same FLOPs and against a naive loop of one GEMM per module.
//!
//! Benchmark ids are `modular/{modular,dense,naive}/n{n}_m{m}_k{k}`; `cargo xtask bench
//! modular` turns them into `target/bench/modular.json` (with `efficiency = dense_s /
//! modular_s`), so keep the format in step with `xtask/src/bench.rs`.
//!
//! Criterion times the modular layer and the dense GEMM a minute apart, and on a shared
//! machine the speed of the whole machine drifts by more than the gaps to be measured. So each
//! configuration is also timed in rounds: a modular step, modula's dense step and each
//! external peer's dense step (MKL, numpy: the same three products timed directly, see
//! [`modula_benches::peer`]) back to back in rotating order; the medians of the per-round
//! ratios go to `target/bench/modular-paired.json`, which the xtask reports as
//! `paired_efficiency` (against modula's dense GEMM) and `efficiency_vs_{mkl,numpy}`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use modula_benches::floor::MemoryFloor;
use modula_benches::peer::{
    Peer, SETTLE, Subject, median, median_ratio, paired_rounds, time_round,
};
use modula_benches::{bench_data, gemm_flops};
use modula_cpu::Cpu;
use modula_modular::{ModularLinear, ModulePool, Routing, Selection};
use modula_nn::{Ctx, Grads, Init, Linear, ParamStore};
use modula_tensor::{Backend, Transpose};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 512;

/// The (n, M, K) configurations of the issue, then the M-scaling series at n = 4096, K = 2.
const CONFIGS: [(usize, usize, usize); 6] = [
    (4096, 16, 2),
    (512, 16, 2),
    (128, 16, 2),
    (1024, 64, 1),
    (4096, 4, 2),
    (4096, 64, 2),
];

/// A uniformly random selection with distinct slots per row (what a trained controller
/// typically produces), so each row costs exactly K module evaluations, as in the dense
/// comparison.
fn selection(n: usize, m: usize, k: usize, seed: u64) -> Selection {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picks = Vec::with_capacity(n * k);
    for _ in 0..n {
        let mut row: Vec<u32> = Vec::with_capacity(k);
        while row.len() < k {
            let c = rng.random_range(0..m as u32);
            if !row.contains(&c) {
                row.push(c);
            }
        }
        picks.extend(row);
    }
    Selection::new(k, picks)
}

/// Rounds of the paired measurement per configuration.
const PAIRED_ROUNDS: usize = 21;
/// Each timed subject of a round repeats its step until it lasts at least this long, so that
/// timer resolution and one-off hiccups stay small against it.
const PAIRED_MIN_SAMPLE: Duration = Duration::from_millis(20);

/// One configuration's paired rounds: the modular step, modula's dense step, the step's memory
/// floor ([`MemoryFloor`]) and each peer's dense step (the three products on `rows x D`
/// operands, timed by the peer directly). The efficiencies are medians over rounds of
/// `dense / modular`; `floor_share` is the median of `floor / modular` (1 = the layer runs at
/// the speed its weight traffic allows) and `floor_efficiency_vs_{peer}` the median of
/// `peer / floor` (the efficiency a purely memory-bound step would reach).
fn paired_entry(
    label: &str,
    rows: usize,
    modular: &mut dyn FnMut(),
    dense: &mut dyn FnMut(),
    floor: &mut dyn FnMut(),
    peers: &mut [Peer],
) -> serde_json::Value {
    let names: Vec<&str> = peers.iter().map(|p| p.name).collect();
    let mut subjects: Vec<Subject<'_>> = vec![
        Box::new(|min| time_round(min, modular)),
        Box::new(|min| time_round(min, dense)),
        Box::new(|min| time_round(min, floor)),
    ];
    for peer in peers.iter_mut() {
        subjects.push(Box::new(move |min| peer.time("step", rows, D, D, min)));
    }
    let seconds = paired_rounds(&mut subjects, PAIRED_ROUNDS, PAIRED_MIN_SAMPLE, SETTLE);
    let mut ratios: Vec<f64> = seconds[1]
        .iter()
        .zip(&seconds[0])
        .map(|(d, m)| d / m)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let q = |f: f64| ratios[((ratios.len() - 1) as f64 * f).round() as usize];
    let mut entry = serde_json::json!({
        "config": label,
        "rounds": ratios.len(),
        "median": median(&ratios),
        "q1": q(0.25),
        "q3": q(0.75),
        "floor_s": median(&seconds[2]),
        "floor_share": median_ratio(&seconds[2], &seconds[0]),
    });
    for (name, rounds) in names.iter().zip(&seconds[3..]) {
        entry[format!("{name}_dense_s")] = median(rounds).into();
        entry[format!("efficiency_vs_{name}")] = median_ratio(rounds, &seconds[0]).into();
        entry[format!("floor_efficiency_vs_{name}")] = median_ratio(rounds, &seconds[2]).into();
    }
    entry
}

fn modular(c: &mut Criterion) {
    let cpu = Cpu::new();
    let mut group = c.benchmark_group("modular");
    // Efficiency is a ratio of two timings taken minutes apart on a shared machine; longer
    // measurements than the xtask default keep its noise down.
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    // Pairs only make sense when criterion is measuring, not when it merely checks that the
    // benches run (`--test`), lists them or profiles one.
    let pairs_wanted =
        !std::env::args().any(|a| ["--test", "--list", "--profile-time"].contains(&a.as_str()));
    let mut paired = Vec::new();
    let mut peers = if pairs_wanted {
        Peer::start_all(cpu.threads())
    } else {
        Vec::new()
    };
    for (n, m, k) in CONFIGS {
        let label = format!("n{n}_m{m}_k{k}");
        let flops = 3 * gemm_flops(n * k, D, D);
        group.throughput(Throughput::Elements(flops));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sel = selection(n, m, k, 2);
        let x = cpu.upload([n, D], &bench_data(n * D, 3));
        let dy = cpu.upload([n, D], &bench_data(n * D, 4));

        let mut params = ParamStore::new();
        let layer = ModularLinear::new(&cpu, &mut params, "mod", m, D, D, &mut rng);
        // One gradient store per layer, reset each iteration as a training loop does, so the
        // weight-gradient buffers are allocated once.
        let mut grads = Grads::new();
        let mut modular_step = || {
            // Routing is part of every call's cost, so it is inside the timed region.
            let routing = Routing::new(black_box(&sel), m);
            let (y, cache) = layer.forward(&cpu, &params, &x, &routing, None);
            grads.reset();
            let (dx, _) = layer.backward(&cpu, &params, &routing, cache, &dy, &mut grads);
            black_box((y, dx));
        };
        // Criterion calls a closure only when its id passes the command line's filter.
        let mut ran = [false; 2];
        group.bench_function(BenchmarkId::new("modular", &label), |bench| {
            ran[0] = true;
            bench.iter(&mut modular_step)
        });

        if m == 4 || (m == 64 && k == 2) {
            // The scaling series needs only the modular layer's time.
            continue;
        }

        let rows = n * k;
        let xd = cpu.upload([rows, D], &bench_data(rows * D, 5));
        let dyd = cpu.upload([rows, D], &bench_data(rows * D, 6));
        let w = cpu.upload([D, D], &bench_data(D * D, 7));
        let (mut y, mut dw, mut dx) = (
            cpu.zeros([rows, D]),
            cpu.zeros([D, D]),
            cpu.zeros([rows, D]),
        );
        let mut dense_step = || {
            cpu.matmul(1.0, &xd, Transpose::No, &w, Transpose::No, 0.0, &mut y);
            cpu.matmul(1.0, &xd, Transpose::Yes, &dyd, Transpose::No, 0.0, &mut dw);
            cpu.matmul(1.0, &dyd, Transpose::No, &w, Transpose::Yes, 0.0, &mut dx);
            black_box((&y, &dw, &dx));
        };
        group.bench_function(BenchmarkId::new("dense", &label), |bench| {
            ran[1] = true;
            bench.iter(&mut dense_step)
        });
        // The filter applies to the pairs too: they run when both halves were measured.
        if pairs_wanted && ran == [true; 2] {
            eprintln!("bench: paired rounds of {label}");
            let mut floor = MemoryFloor::new(m * D * D, cpu.threads());
            paired.push(paired_entry(
                &label,
                rows,
                &mut modular_step,
                &mut dense_step,
                &mut || floor.step(),
                &mut peers,
            ));
        }

        let mut pool_params = ParamStore::new();
        let pool = ModulePool {
            modules: (0..m)
                .map(|i| {
                    Linear::new(
                        &cpu,
                        &mut pool_params,
                        &format!("m{i}"),
                        D,
                        D,
                        Init::Glorot,
                        &mut rng,
                    )
                })
                .collect(),
        };
        group.bench_function(BenchmarkId::new("naive", &label), |bench| {
            bench.iter(|| {
                let routing = Routing::new(black_box(&sel), m);
                let (y, cache) = pool.forward(&cpu, &pool_params, &x, &routing, &mut Ctx::eval());
                grads.reset();
                let dx = pool.backward(&cpu, &pool_params, &routing, cache, &dy, &mut grads);
                black_box((y, dx));
            });
        });
    }
    group.finish();
    if !paired.is_empty() {
        let about: serde_json::Map<String, serde_json::Value> = peers
            .iter()
            .map(|p| (p.name.to_owned(), p.about.clone()))
            .collect();
        modula_benches::write_side_file(
            "modular-paired.json",
            &serde_json::json!({"peers": about, "entries": paired}),
        );
    }
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    modular(&mut criterion);
    criterion.final_summary();
}
