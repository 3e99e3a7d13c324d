//! f32 GEMM throughput of the [`Cpu`] backend: `A [rows x 512] * B [512 x 512]`, with
//! matrixmultiply's single-threaded `sgemm` on the same shapes for comparison.
//!
//! Benchmark ids are `cpu/matmul/t{threads}/{rows}x{k}x{n}`; `cargo xtask bench gemm` parses
//! them back into the figures in `target/bench/gemm.json`, so keep the format in step with
//! `xtask/src/bench.rs`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use modula_benches::{bench_data, gemm_flops};
use modula_cpu::Cpu;
use modula_tensor::{Backend, Transpose};

/// Row counts of A: a tiny per-module batch, a small one, a square product and a large batch.
const ROWS: [usize; 4] = [16, 64, 512, 4096];
/// Inner dimension and output width, fixed at a typical hidden size.
const K: usize = 512;
const N: usize = 512;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu/matmul");
    for threads in [1, 2] {
        let cpu = Cpu::with_threads(threads);
        let b = cpu.upload([K, N], &bench_data(K * N, 2));
        for rows in ROWS {
            let a = cpu.upload([rows, K], &bench_data(rows * K, 1));
            let mut out = cpu.zeros([rows, N]);
            group.throughput(Throughput::Elements(gemm_flops(rows, K, N)));
            let id = BenchmarkId::new(format!("t{threads}"), format!("{rows}x{K}x{N}"));
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    cpu.matmul(
                        1.0,
                        black_box(&a),
                        Transpose::No,
                        black_box(&b),
                        Transpose::No,
                        0.0,
                        &mut out,
                    );
                    // The CPU backend is synchronous, but a device backend would only queue the
                    // work; synchronising keeps the timing honest for every backend.
                    cpu.synchronize().expect("CPU backend cannot fail");
                });
            });
        }
    }
    group.finish();

    // matrixmultiply (single-threaded, as modula used it before its own kernel), measured in
    // the same run as a reference point.
    let mut group = c.benchmark_group("matrixmultiply/sgemm");
    let b = bench_data(K * N, 2);
    for rows in ROWS {
        let a = bench_data(rows * K, 1);
        let mut out = vec![0.0f32; rows * N];
        group.throughput(Throughput::Elements(gemm_flops(rows, K, N)));
        let id = BenchmarkId::new("t1", format!("{rows}x{K}x{N}"));
        group.bench_function(id, |bench| {
            bench.iter(|| {
                // SAFETY: row-major buffers of exactly rows x K, K x N and rows x N elements,
                // addressed with matching strides; `out` does not alias the inputs.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        K,
                        N,
                        1.0,
                        black_box(a.as_ptr()),
                        K as isize,
                        1,
                        black_box(b.as_ptr()),
                        N as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        N as isize,
                        1,
                    );
                }
            });
        });
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    gemm(&mut criterion);
    criterion.final_summary();
}
