//! The WGSL CSR forward product against the CPU's kernels (on lavapipe in CI), and the rest of
//! the sparse operations through their default bodies on this backend's core kernels.

use modula_cpu::Cpu;
use modula_sparse::{Select, SparseBackend};
use modula_tensor::Backend;
use modula_wgpu::testing::backend_or_skip;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `rows x cols` values, each zero with probability `zeros`.
fn activation(rng: &mut ChaCha8Rng, rows: usize, cols: usize, zeros: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| {
            if rng.random_bool(zeros) {
                0.0
            } else {
                rng.random_range(-1.0..1.0)
            }
        })
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}: element {i} is {g}, expected {w}"
        );
    }
}

#[test]
fn csr_products_match_the_cpu() {
    let Some(gpu) = backend_or_skip("csr_products_match_the_cpu") else {
        return;
    };
    let cpu = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // n = 1, empty and full matrices, widths around the workgroup size.
    for (n, k, m, zeros) in [
        (1, 7, 3, 0.5),
        (5, 33, 257, 0.9),
        (16, 64, 40, 1.0),
        (9, 20, 31, 0.0),
        (64, 300, 130, 0.95),
    ] {
        let x = activation(&mut rng, n, k, zeros);
        let w = activation(&mut rng, k, m, 0.0);
        let bias = activation(&mut rng, 1, m, 0.0);
        let c0 = activation(&mut rng, n, m, 0.0);
        let what = format!("{n}x{k}x{m}, {zeros} zeros");
        let s = cpu
            .sparsify(&cpu.upload([n, k], &x), Select::NONZERO)
            .unwrap();
        let run = |b: &dyn Fn() -> Vec<f32>| b();
        let on_cpu = run(&|| {
            let mut c = cpu.upload([n, m], &c0);
            let (wt, bt) = (cpu.upload([k, m], &w), cpu.upload([1, m], &bias));
            cpu.sparse_matmul(&s, &wt, Some(&bt), 0.5, &mut c);
            cpu.download(&c).unwrap()
        });
        let on_gpu = run(&|| {
            let mut c = gpu.upload([n, m], &c0);
            let (wt, bt) = (gpu.upload([k, m], &w), gpu.upload([1, m], &bias));
            gpu.sparse_matmul(&s, &wt, Some(&bt), 0.5, &mut c);
            gpu.download(&c).unwrap()
        });
        close(
            &format!("{what}: forward with bias and beta"),
            &on_gpu,
            &on_cpu,
        );
        // beta = 0 without bias, over NaN: the sparse form built on the device (the default
        // body), and the weight-gradient form (the transpose times dY).
        let xg = gpu.upload([n, k], &x);
        let sg = gpu.sparsify(&xg, Select::NONZERO).unwrap();
        assert_eq!(sg, s, "{what}: sparsify");
        let dy = activation(&mut rng, n, m, 0.0);
        let mut dw = gpu.upload([k, m], &vec![f32::NAN; k * m]);
        gpu.sparse_matmul(
            &sg.transpose(),
            &gpu.upload([n, m], &dy),
            None,
            0.0,
            &mut dw,
        );
        let mut want = cpu.zeros([k, m]);
        cpu.sparse_matmul(
            &s.transpose(),
            &cpu.upload([n, m], &dy),
            None,
            0.0,
            &mut want,
        );
        close(
            &format!("{what}: weight gradient"),
            &gpu.download(&dw).unwrap(),
            &cpu.download(&want).unwrap(),
        );
        // The sampled input gradient runs the default body here.
        let dx = gpu.sampled_matmul_t(&sg, &gpu.upload([n, m], &dy), &gpu.upload([k, m], &w));
        let want = cpu.sampled_matmul_t(&s, &cpu.upload([n, m], &dy), &cpu.upload([k, m], &w));
        close(
            &format!("{what}: input gradient"),
            &gpu.download(&dx).unwrap(),
            &cpu.download(&want).unwrap(),
        );
    }
}
