//! The wgpu backend: dense matmul (512 and 2048 square, plus 4096 and 8192 on a hardware
//! adapter) and the grouped products of the modular-layer bench configurations (`d = 512`),
//! timed from recording to the end of the device work (`synchronize`), so submission overhead
//! is included.
//!
//! Benchmark ids are `wgpu/matmul/{s}x{s}x{s}` and `wgpu/grouped/n{n}_m{m}_k{k}` (the three
//! grouped products of one forward+backward: XW, XWt, XtY). The adapter is recorded in
//! `target/bench/wgpu-adapter.json` for `cargo xtask bench wgpu`, which writes
//! `target/bench/wgpu.json`; keep both formats in step with `xtask/src/bench.rs`.
//!
//! On a software adapter (lavapipe: device type `cpu`) these are CPU timings of a software
//! Vulkan driver, not GPU figures.

use criterion::{BenchmarkId, Criterion, Throughput};
use modula_benches::{bench_data, gemm_flops};
use modula_tensor::{Backend, GroupedOp, Transpose};
use modula_wgpu::Wgpu;
use modula_wgpu::testing::in_ci;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 512;

/// The (n, M, K) configurations of the modular-layer bench.
const CONFIGS: [(usize, usize, usize); 4] =
    [(4096, 16, 2), (512, 16, 2), (128, 16, 2), (1024, 64, 1)];

/// Writes the adapter's identity next to the bench figures.
fn record_adapter(gpu: &Wgpu) {
    let a = gpu.adapter();
    let info = serde_json::json!({
        "name": a.name,
        "backend": a.backend,
        "device_type": a.device_type.as_str(),
        "driver": a.driver,
        "driver_info": a.driver_info,
        "software": a.is_software(),
    });
    modula_benches::write_side_file("wgpu-adapter.json", &info);
}

/// Group offsets of `n * k` routed rows spread uniformly at random over `m` modules.
fn offsets(n: usize, m: usize, k: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut counts = vec![0u32; m];
    for _ in 0..n * k {
        counts[rng.random_range(0..m)] += 1;
    }
    let mut offsets = vec![0u32];
    for c in counts {
        offsets.push(offsets.last().expect("non-empty") + c);
    }
    offsets
}

fn wgpu_bench(c: &mut Criterion) {
    let gpu = match Wgpu::new() {
        Ok(gpu) => gpu,
        Err(e) if in_ci() => panic!("wgpu bench: no adapter under CI=true: {e}"),
        Err(e) => {
            eprintln!("wgpu bench: skipped, no adapter: {e}");
            return;
        }
    };
    eprintln!("wgpu bench on {}", gpu.adapter());
    if gpu.is_software() {
        eprintln!("wgpu bench: software adapter; these are CPU timings, not GPU figures");
    }
    record_adapter(&gpu);
    let sync = |gpu: &Wgpu| gpu.synchronize().expect("device work");

    let mut group = c.benchmark_group("wgpu");
    // A GPU needs products far larger than 2048 square before launch and submission costs stop
    // hiding its throughput; on a software adapter one 8192-square product would take minutes.
    let sizes: &[usize] = if gpu.is_software() {
        &[512, 2048]
    } else {
        &[512, 2048, 4096, 8192]
    };
    for &s in sizes {
        group.throughput(Throughput::Elements(gemm_flops(s, s, s)));
        if s >= 2048 {
            // Seconds per product on a software adapter: criterion's minimum sample count.
            group.sample_size(10);
        }
        let a = gpu.upload([s, s], &bench_data(s * s, 1));
        let b = gpu.upload([s, s], &bench_data(s * s, 2));
        let mut out = gpu.zeros([s, s]);
        // The first use compiles the pipeline; keep that out of the timing.
        gpu.matmul(1.0, &a, Transpose::No, &b, Transpose::No, 0.0, &mut out);
        sync(&gpu);
        group.bench_function(
            BenchmarkId::new("matmul", format!("{s}x{s}x{s}")),
            |bench| {
                bench.iter(|| {
                    gpu.matmul(1.0, &a, Transpose::No, &b, Transpose::No, 0.0, &mut out);
                    sync(&gpu);
                })
            },
        );
    }
    for (n, m, k) in CONFIGS {
        let rows = n * k;
        group.throughput(Throughput::Elements(3 * gemm_flops(rows, D, D)));
        let offsets = offsets(n, m, k);
        let x = gpu.upload([rows, D], &bench_data(rows * D, 3));
        let dy = gpu.upload([rows, D], &bench_data(rows * D, 4));
        let w = gpu.upload([m * D, D], &bench_data(m * D * D, 5));
        let mut y = gpu.zeros([rows, D]);
        let mut dx = gpu.zeros([rows, D]);
        let mut dw = gpu.zeros([m * D, D]);
        let mut step = || {
            gpu.grouped_matmul(GroupedOp::XW, &x, &w, &offsets, 0.0, &mut y);
            gpu.grouped_matmul(GroupedOp::XWt, &dy, &w, &offsets, 0.0, &mut dx);
            gpu.grouped_matmul(GroupedOp::XtY, &x, &dy, &offsets, 0.0, &mut dw);
            sync(&gpu);
        };
        step();
        group.bench_function(
            BenchmarkId::new("grouped", format!("n{n}_m{m}_k{k}")),
            |bench| bench.iter(&mut step),
        );
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no docs (missing_docs is a workspace lint).
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    wgpu_bench(&mut criterion);
    criterion.final_summary();
}
