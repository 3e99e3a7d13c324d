//! The sparse kernels against dense products of the densified input: every instruction set
//! on slices, and the `Cpu` backend, its default bodies (`CoreOnly`) and the reference oracle
//! through `SparseBackend`.

use modula_cpu::Cpu;
use modula_cpu::Team;
use modula_cpu::gemm::Parallelism;
use modula_cpu::sparse::{self, Isa};
use modula_sparse::{BlockSparse, Csr, Select, SparseBackend};
use modula_tensor::conformance::CoreOnly;
use modula_tensor::{Backend, Reference};
use proptest::prelude::*;

/// Every way a kernel may run: on the caller, split into rayon tasks, split on a team.
fn splits() -> [Parallelism<'static>; 3] {
    static TEAM: std::sync::OnceLock<Team> = std::sync::OnceLock::new();
    let team = TEAM.get_or_init(|| Team::new(2));
    [
        Parallelism::Sequential,
        Parallelism::Rayon(2),
        Parallelism::Team(team),
    ]
}

/// A sparse activation: `rows x cols`, each entry non-zero with probability `density`, and
/// every third row empty when `empty_rows` (ReLU outputs have such rows).
fn activation(rows: usize, cols: usize, density: f64, empty_rows: bool, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..rows * cols)
        .map(|e| {
            let keep = next() < density && !(empty_rows && (e / cols.max(1)) % 3 == 1);
            let v = (next() * 4.0 - 2.0) as f32;
            if keep { v } else { 0.0 }
        })
        .collect()
}

/// `A B` (+ bias, + beta C) in f64 on the host, with the sum of absolute terms of each
/// element (the scale of its rounding error).
#[allow(clippy::too_many_arguments)]
fn dense(
    a: &[f32],
    b: &[f32],
    n: usize,
    k: usize,
    m: usize,
    bias: Option<&[f32]>,
    beta: f32,
    c: &[f32],
) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0); n * m];
    for i in 0..n {
        for j in 0..m {
            let mut sum = beta as f64 * c[i * m + j] as f64 + bias.map_or(0.0, |b| b[j] as f64);
            let mut mag = sum.abs();
            for p in 0..k {
                let t = a[i * k + p] as f64 * b[p * m + j] as f64;
                sum += t;
                mag += t.abs();
            }
            out[i * m + j] = (sum, mag);
        }
    }
    out
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

#[track_caller]
fn assert_close(got: &[f32], want: &[(f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (e, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 * mag + 1e-6,
            "{what}: element {e}: {g} vs {w}"
        );
    }
}

/// The masked input gradient on the host: `dY W^T` where `pattern` is non-zero, else 0.
fn sampled_want(
    pattern: &[f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Vec<(f64, f64)> {
    let full = dense(
        dy,
        &transpose(w, k, m),
        n,
        m,
        k,
        None,
        0.0,
        &vec![0.0; n * k],
    );
    full.iter()
        .zip(pattern)
        .map(|(&f, &p)| if p != 0.0 { f } else { (0.0, 0.0) })
        .collect()
}

/// Checks the forward, the weight gradient and the sampled input gradient of one case on
/// every instruction set and thread count, on slices.
fn check_slices(n: usize, k: usize, m: usize, density: f64, empty_rows: bool, seed: u64) {
    let x = activation(n, k, density, empty_rows, seed);
    let w = activation(k, m, 1.0, false, seed + 1);
    let bias = activation(1, m, 1.0, false, seed + 2);
    let dy = activation(n, m, 1.0, false, seed + 3);
    let c0 = activation(n, m, 1.0, false, seed + 4);
    let want_y = dense(&x, &w, n, k, m, Some(&bias), 0.5, &c0);
    let want_dw = dense(
        &transpose(&x, n, k),
        &dy,
        k,
        n,
        m,
        None,
        0.0,
        &vec![0.0; k * m],
    );
    let want_dx = sampled_want(&x, &dy, &w, n, k, m);
    for isa in Isa::available() {
        for par in splits() {
            let what = format!("{isa:?}, {par:?}, {n}x{k}x{m}, density {density}");
            let s = sparse::sparsify(isa, &x, n, k, Select::NONZERO, par);
            assert_eq!(
                s,
                Csr::from_dense(n, k, &x, Select::NONZERO),
                "{what}: sparsify"
            );
            assert_eq!(
                sparse::count_kept(isa, &x, Select::NONZERO, par),
                s.nnz(),
                "{what}: count"
            );
            let mut y = c0.clone();
            sparse::csr_matmul(isa, &s, &w, m, Some(&bias), 0.5, &mut y, par);
            assert_close(&y, &want_y, &format!("{what}: forward"));
            // beta = 0 ignores C, even NaN.
            let mut dw = vec![f32::NAN; k * m];
            sparse::csr_matmul(isa, &s.transpose(), &dy, m, None, 0.0, &mut dw, par);
            assert_close(&dw, &want_dw, &format!("{what}: weight gradient"));
            let mut dx = vec![0.0; n * k];
            sparse::sampled_matmul_t(isa, &s, &dy, &w, m, &mut dx, par);
            assert_close(&dx, &want_dx, &format!("{what}: input gradient"));
        }
    }
}

/// Checks the block-sparse forward, weight gradient and sampled input gradient of one case
/// on every instruction set and thread count, against f64 dense products.
fn check_blocks(
    n: usize,
    k: usize,
    m: usize,
    row_block: usize,
    col_block: usize,
    density: f64,
    seed: u64,
) {
    let x = activation(n, k, density, true, seed);
    let w = activation(k, m, 1.0, false, seed + 1);
    let bias = activation(1, m, 1.0, false, seed + 2);
    let dy = activation(n, m, 1.0, false, seed + 3);
    let c0 = activation(n, m, 1.0, false, seed + 4);
    for isa in Isa::available() {
        for par in splits() {
            let s =
                sparse::sparsify_blocks(isa, &x, n, k, row_block, col_block, Select::NONZERO, par);
            assert_eq!(
                &s,
                &BlockSparse::from_dense(n, k, &x, row_block, col_block, Select::NONZERO)
            );
            for (bias, beta) in [(Some(&bias[..]), 0.0), (None, 0.5), (Some(&bias[..]), 2.0)] {
                let mut y = if beta == 0.0 {
                    vec![f32::NAN; n * m]
                } else {
                    c0.clone()
                };
                sparse::block_matmul(isa, &s, &w, m, bias, beta, &mut y, par);
                assert_close(
                    &y,
                    &dense(&x, &w, n, k, m, bias, beta, &c0),
                    "block forward",
                );
            }
            let mut dw = vec![0.0; k * m];
            sparse::block_matmul(isa, &s.transpose(), &dy, m, None, 0.0, &mut dw, par);
            let want = dense(
                &transpose(&x, n, k),
                &dy,
                k,
                n,
                m,
                None,
                0.0,
                &vec![0.0; k * m],
            );
            assert_close(&dw, &want, "block weight gradient");
            let mut dx = vec![0.0; n * k];
            sparse::block_sampled_matmul_t(isa, &s, &dy, &w, m, &mut dx, par);
            // The gradient is kept inside every active block, also where x is zero.
            let inside: Vec<f32> = s
                .to_dense()
                .iter()
                .zip(0..)
                .map(|(_, e)| {
                    let (i, j) = (e / k, e % k);
                    let r = i / row_block;
                    let c = (j / col_block) as u32;
                    if s.active(r).contains(&c) { 1.0 } else { 0.0 }
                })
                .collect();
            assert_close(
                &dx,
                &sampled_want(&inside, &dy, &w, n, k, m),
                "block input gradient",
            );
        }
    }
}

/// Shapes around the panel width (128) and the vector width (16).
fn width() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..40, Just(127), Just(128), Just(129), 130usize..300]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn csr_products_equal_dense_products_of_the_densified_input(
        n in 1usize..12,
        k in width(),
        m in width(),
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        empty_rows in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_slices(n, k, m, density, empty_rows, seed);
    }

    #[test]
    fn block_products_equal_dense_products_of_the_densified_input(
        n in 1usize..24,
        k in 1usize..80,
        m in width(),
        row_block in prop_oneof![1usize..9, 9usize..14],
        col_block in 1usize..20,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..0.2],
        seed in any::<u64>(),
    ) {
        check_blocks(n, k, m, row_block, col_block, density, seed);
    }

    /// Through `SparseBackend`: the CPU kernels, the default bodies on the CPU's core kernels
    /// and the reference oracle all compute the dense products of the densified input.
    #[test]
    fn every_backend_agrees_through_the_checked_front(
        n in 1usize..8,
        k in 1usize..50,
        m in 1usize..50,
        density in 0.0f64..1.0,
        relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let select = if relu { Select::Relu } else { Select::NONZERO };
        let x = activation(n, k, density, true, seed);
        let kept: Vec<f32> = x.iter().map(|&v| select.apply(v)).collect();
        let w = activation(k, m, 1.0, false, seed + 1);
        let bias = activation(1, m, 1.0, false, seed + 2);
        let dy = activation(n, m, 1.0, false, seed + 3);
        let want_y = dense(&kept, &w, n, k, m, Some(&bias), 0.0, &vec![0.0; n * m]);
        let want_dx = sampled_want(&kept, &dy, &w, n, k, m);
        fn run<B: SparseBackend>(
            b: &B, x: &[f32], w: &[f32], bias: &[f32], dy: &[f32], [n, k, m]: [usize; 3], select: Select,
        ) -> (Csr, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
            let (xt, wt) = (b.upload([n, k], x), b.upload([k, m], w));
            let (bt, dyt) = (b.upload([1, m], bias), b.upload([n, m], dy));
            let s = b.sparsify(&xt, select).unwrap();
            assert_eq!(b.count_kept(&xt, select).unwrap(), s.nnz());
            let y = b.sparse_linear(&s, &wt, Some(&bt));
            let dx = b.sampled_matmul_t(&s, &dyt, &wt);
            let blocks = b.sparsify_blocks(&xt, 2, 3, select).unwrap();
            let yb = b.block_linear(&blocks, &wt, Some(&bt));
            let dense = b.densify(&s);
            assert_eq!(b.download(&b.densify_blocks(&blocks)).unwrap(), blocks.to_dense());
            (s, b.download(&y).unwrap(), b.download(&dx).unwrap(), b.download(&yb).unwrap(), b.download(&dense).unwrap())
        }
        let dims = [n, k, m];
        let cpu = Cpu::with_threads(2);
        let runs = [
            run(&cpu, &x, &w, &bias, &dy, dims, select),
            run(&CoreOnly(cpu.clone()), &x, &w, &bias, &dy, dims, select),
            run(&Reference, &x, &w, &bias, &dy, dims, select),
        ];
        for (s, y, dx, yb, d) in &runs {
            prop_assert_eq!(s, &Csr::from_dense(n, k, &x, select));
            prop_assert_eq!(d, &kept);
            assert_close(y, &want_y, "forward");
            assert_close(yb, &want_y, "block forward");
            assert_close(dx, &want_dx, "input gradient");
        }
    }
}

/// Products large enough to be split across threads, every way: CSR products by column panels
/// and by rows, block products by row blocks and by rows within one block. The first CSR
/// product uses each row of `B` about 13 times (a third of its rows are empty), so its panels
/// are copied first (`PACK_REUSE`); the other two read `B` in place.
#[test]
fn parallel_splits_compute_the_same_products() {
    check_slices(64, 300, 272, 0.3, true, 7);
    check_slices(1, 4096, 520, 0.8, false, 8);
    check_slices(3, 2048, 1000, 0.9, false, 9);
    // Dense enough rows to take the copied panels in slices of `DEPTH` rows of `B` (the last
    // one short), over three blocks of `ROW_BLOCK` rows (the last one short), on whole and
    // partial panels.
    check_slices(300, 200, 260, 0.5, true, 12);
    // The same split by rows (one panel): slices over row blocks of a task that starts at a
    // row other than 0.
    check_slices(300, 200, 100, 0.5, true, 13);
    // No columns in S: C = beta C + bias, and the weight gradient (no rows) is empty.
    check_slices(5, 0, 40, 0.5, false, 14);
    // One row block too large for the CSR kernels, split by rows across the threads; and
    // many row blocks spread over them.
    check_blocks(32, 256, 520, 32, 32, 0.03, 10);
    check_blocks(200, 96, 300, 16, 8, 0.02, 11);
}

/// NaN and infinity in the sparse operand reach the output as in a dense product, and
/// thresholds drop small entries.
#[test]
fn special_values_and_thresholds() {
    let x = [f32::NAN, 0.0, 0.25, -3.0, f32::INFINITY, 0.0];
    for isa in Isa::available() {
        let s = sparse::sparsify(isa, &x, 2, 3, Select::NONZERO, Parallelism::Sequential);
        assert_eq!(s.indices(), &[0, 2, 0, 1]);
        let s = sparse::sparsify(
            isa,
            &x,
            2,
            3,
            Select::Magnitude(0.5),
            Parallelism::Sequential,
        );
        assert_eq!(s.indices(), &[0, 0, 1]);
        let s = sparse::sparsify(isa, &x, 2, 3, Select::Relu, Parallelism::Sequential);
        assert_eq!(s.indices(), &[0, 2, 1]);
        let mut y = [0.0f32; 2];
        sparse::csr_matmul(
            isa,
            &s,
            &[1.0, 1.0, 1.0],
            1,
            None,
            0.0,
            &mut y,
            Parallelism::Sequential,
        );
        assert!(y[0].is_nan() && y[1] == f32::INFINITY, "{y:?}");
    }
}

/// Misuse panics in the front, with the operation's name, on every backend alike.
#[test]
#[should_panic(expected = "sparse_matmul: inner dimensions differ")]
fn mismatched_shapes_panic_in_front() {
    let cpu = Cpu::with_threads(1);
    let s = Csr::from_dense(2, 3, &[1.0; 6], Select::NONZERO);
    let w = cpu.zeros([4, 2]);
    let _ = cpu.sparse_linear(&s, &w, None);
}
