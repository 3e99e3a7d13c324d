//! The packed GEMM against the reference oracle: random shapes, all transpose combinations,
//! random alpha/beta, one and two threads, strided views and the packed-B reuse path.

use std::sync::OnceLock;

use modula_cpu::gemm::{
    KERNEL_VAR, MatMut, MatRef, PackedRhs, Parallelism, gemm, gemm_bias, gemm_packed,
};
use modula_cpu::{Cpu, Team};
use modula_tensor::{Backend, Reference, Transpose};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One backend per thread count, shared by all cases (starting a pool per case is slow).
fn cpu(threads: usize) -> &'static Cpu {
    static POOLS: OnceLock<[Cpu; 2]> = OnceLock::new();
    &POOLS.get_or_init(|| [Cpu::with_threads(1), Cpu::with_threads(2)])[threads - 1]
}

/// Rayon pools of one and two threads, for the products split into rayon tasks.
fn pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOLS: OnceLock<[rayon::ThreadPool; 2]> = OnceLock::new();
    let build = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("a pool")
    };
    &POOLS.get_or_init(|| [build(1), build(2)])[threads - 1]
}

/// A team of two threads, the caller being one of them.
fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(2))
}

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// `op(x)` of a row-major `[rows, cols]` buffer as an owned row-major matrix, for the oracle.
fn materialise(data: &[f32], rows: usize, cols: usize, t: Transpose) -> (Vec<f32>, [usize; 2]) {
    match t {
        Transpose::No => (data.to_vec(), [rows, cols]),
        Transpose::Yes => {
            let mut out = vec![0.0; data.len()];
            for i in 0..rows {
                for j in 0..cols {
                    out[j * rows + i] = data[i * cols + j];
                }
            }
            (out, [cols, rows])
        }
    }
}

/// A row-major `[rows, cols]` buffer as the view `op(x)`.
fn view(data: &[f32], rows: usize, cols: usize, t: Transpose) -> MatRef<'_> {
    let v = MatRef::row_major(data, rows, cols);
    if t == Transpose::Yes { v.t() } else { v }
}

/// `C = alpha * A * B + beta * C` computed by the oracle (A, B already applied, row-major),
/// together with a per-element error bound: a few ulps per term of the sum of magnitudes
/// `|alpha| * |A| * |B| + |beta * C|`, which is what f32 summation in any order guarantees.
#[allow(clippy::too_many_arguments)]
fn oracle(
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let r = Reference;
    let (at, bt) = (r.upload([m, k], a), r.upload([k, n], b));
    let mut want = r.upload([m, n], c);
    r.matmul(
        alpha,
        &at,
        Transpose::No,
        &bt,
        Transpose::No,
        beta,
        &mut want,
    );
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (aa, ba) = (r.upload([m, k], &abs(a)), r.upload([k, n], &abs(b)));
    let mut bound = r.upload([m, n], &abs(c));
    let beta_abs = if beta == 0.0 { 0.0 } else { beta.abs() };
    r.matmul(
        alpha.abs(),
        &aa,
        Transpose::No,
        &ba,
        Transpose::No,
        beta_abs,
        &mut bound,
    );
    let eps = f32::EPSILON * (k as f32 + 4.0);
    let tol = r
        .download(&bound)
        .unwrap()
        .iter()
        .map(|s| eps * s + 1e-6)
        .collect();
    (r.download(&want).unwrap(), tol)
}

fn compare(what: &str, got: &[f32], want: &[f32], tol: &[f32]) -> Result<(), String> {
    assert_eq!(got.len(), want.len());
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        // NaN anywhere fails the check, so a NaN leaking from C is caught.
        if (g - w).abs().is_nan() || (g - w).abs() > *t {
            return Err(format!(
                "{what}: element {i}: got {g}, want {w} (tolerance {t})"
            ));
        }
    }
    Ok(())
}

/// Runs one product through `Cpu::matmul` and checks it against the oracle.
#[allow(clippy::too_many_arguments)]
fn check_cpu(
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: Transpose,
    tb: Transpose,
    alpha: f32,
    beta: f32,
    seed: u64,
) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let [ar, ac] = ta.apply([m, k]);
    let [br, bc] = tb.apply([k, n]);
    let a = random(&mut rng, m * k);
    let b = random(&mut rng, k * n);
    let mut c = random(&mut rng, m * n);
    let cpu = cpu(threads);
    let mut ct = cpu.upload([m, n], &c);
    if beta == 0.0 {
        // beta == 0 must ignore C entirely, NaN included.
        cpu.fill(&mut ct, f32::NAN);
        c.fill(0.0);
    }
    cpu.matmul(
        alpha,
        &cpu.upload([ar, ac], &a),
        ta,
        &cpu.upload([br, bc], &b),
        tb,
        beta,
        &mut ct,
    );
    let (a_op, _) = materialise(&a, ar, ac, ta);
    let (b_op, _) = materialise(&b, br, bc, tb);
    let (want, tol) = oracle(alpha, &a_op, &b_op, beta, &c, m, k, n);
    let what =
        format!("m={m} k={k} n={n} {ta:?}/{tb:?} alpha={alpha} beta={beta} threads={threads}");
    compare(&what, &cpu.download(&ct).unwrap(), &want, &tol)
}

fn transpose() -> impl Strategy<Value = Transpose> {
    any::<bool>().prop_map(Transpose::from_bool)
}

fn scalar() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(1.0f32), -2.0f32..2.0]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn cpu_matmul_matches_reference(
        m in 0usize..150,
        k in 0usize..150,
        n in 0usize..150,
        ta in transpose(),
        tb in transpose(),
        alpha in scalar(),
        beta in scalar(),
        threads in 1usize..=2,
        seed in any::<u64>(),
    ) {
        check_cpu(threads, m, k, n, ta, tb, alpha, beta, seed).map_err(TestCaseError::fail)?;
    }
}

/// Runs one product whose A (or B) reads its rows through an index
/// ([`MatRef::gathered_rows`]), used as is or transposed, against the oracle on the gathered
/// matrix written out; the other operand is plain, as is or transposed. With two threads the
/// product is split on a [`Team`] or in the rayon pool, as `on_team` says.
#[allow(clippy::too_many_arguments)]
fn check_gathered(
    threads: usize,
    on_team: bool,
    [m, k, n]: [usize; 3],
    gather_a: bool,
    gathered_t: bool,
    other_t: Transpose,
    alpha: f32,
    beta: f32,
    seed: u64,
) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The gathered operand's view is [rows, cols] before any transpose.
    let (op_rows, op_cols) = if gather_a { (m, k) } else { (k, n) };
    let (rows, cols) = if gathered_t {
        (op_cols, op_rows)
    } else {
        (op_rows, op_cols)
    };
    let stored = rng.random_range(1..=30);
    let data = random(&mut rng, stored * cols);
    // Rows in any order, repeats allowed, as a routing produces them.
    let idx: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..stored as u32))
        .collect();
    let written: Vec<f32> = idx
        .iter()
        .flat_map(|&r| data[r as usize * cols..(r as usize + 1) * cols].to_vec())
        .collect();
    let (gathered_op, _) = materialise(&written, rows, cols, Transpose::from_bool(gathered_t));
    let gathered = MatRef::gathered_rows(&data, &idx, cols);
    let gathered = if gathered_t { gathered.t() } else { gathered };
    let [or, oc] = other_t.apply(if gather_a { [k, n] } else { [m, k] });
    let other = random(&mut rng, or * oc);
    let (other_op, _) = materialise(&other, or, oc, other_t);
    let other_view = view(&other, or, oc, other_t);
    let mut c = random(&mut rng, m * n);
    let mut got = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        c.clone()
    };
    if beta == 0.0 {
        c.fill(0.0);
    }
    let (av, bv) = if gather_a {
        (gathered, other_view)
    } else {
        (other_view, gathered)
    };
    let c_view = MatMut::row_major(&mut got, m, n);
    if threads == 2 && on_team {
        gemm(alpha, av, bv, beta, c_view, Parallelism::Team(team()));
    } else {
        pool(threads).install(|| gemm(alpha, av, bv, beta, c_view, Parallelism::Rayon(threads)));
    }
    let (a_op, b_op) = if gather_a {
        (gathered_op, other_op)
    } else {
        (other_op, gathered_op)
    };
    let (want, tol) = oracle(alpha, &a_op, &b_op, beta, &c, m, k, n);
    let what = format!(
        "m={m} k={k} n={n} gathered {} (transposed: {gathered_t}), other {other_t:?}, \
         alpha={alpha} beta={beta} threads={threads} on the team: {on_team}",
        if gather_a { "A" } else { "B" }
    );
    compare(&what, &got, &want, &tol)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Gathered rows give the same product as the gathered matrix written out, on every path
    /// (packed, in place, few-row dot products) and with one or two threads.
    #[test]
    fn gathered_rows_match_reference(
        m in 0usize..70,
        k in 0usize..90,
        n in 0usize..70,
        gather_a in any::<bool>(),
        gathered_t in any::<bool>(),
        other_t in transpose(),
        alpha in scalar(),
        beta in scalar(),
        threads in 1usize..=2,
        on_team in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_gathered(threads, on_team, [m, k, n], gather_a, gathered_t, other_t, alpha, beta, seed)
            .map_err(TestCaseError::fail)?;
    }
}

/// `gemm_bias` into an uninitialised or a NaN-filled `C` equals the oracle's `alpha A B` plus
/// the bias in every row.
#[allow(clippy::too_many_arguments)]
fn check_bias(
    threads: usize,
    [m, k, n]: [usize; 3],
    ta: Transpose,
    tb: Transpose,
    alpha: f32,
    uninit: bool,
    seed: u64,
) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let [ar, ac] = ta.apply([m, k]);
    let [br, bc] = tb.apply([k, n]);
    let (a, b, bias) = (
        random(&mut rng, m * k),
        random(&mut rng, k * n),
        random(&mut rng, n),
    );
    let (av, bv) = (view(&a, ar, ac, ta), view(&b, br, bc, tb));
    let product = |c: MatMut<'_>| {
        pool(threads).install(|| gemm_bias(alpha, av, bv, &bias, c, Parallelism::Rayon(threads)))
    };
    let got: Vec<f32> = if uninit {
        let mut out = vec![std::mem::MaybeUninit::<f32>::uninit(); m * n];
        product(MatMut::uninit(&mut out, m, n, n));
        // SAFETY: gemm_bias wrote every element of the m x n view, which is all of `out`.
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    } else {
        let mut out = vec![f32::NAN; m * n];
        product(MatMut::row_major(&mut out, m, n));
        out
    };
    let (a_op, _) = materialise(&a, ar, ac, ta);
    let (b_op, _) = materialise(&b, br, bc, tb);
    let rows: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
    let (want, tol) = oracle(alpha, &a_op, &b_op, 1.0, &rows, m, k, n);
    let what = format!(
        "gemm_bias m={m} k={k} n={n} {ta:?}/{tb:?} alpha={alpha} uninit={uninit} threads={threads}"
    );
    compare(&what, &got, &want, &tol)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The bias is stored with the product on every path, including an empty inner
    /// dimension, into initialised and uninitialised outputs.
    #[test]
    fn gemm_bias_matches_reference(
        m in 0usize..90,
        k in 0usize..300,
        n in 0usize..90,
        ta in transpose(),
        tb in transpose(),
        alpha in scalar(),
        uninit in any::<bool>(),
        threads in 1usize..=2,
        seed in any::<u64>(),
    ) {
        check_bias(threads, [m, k, n], ta, tb, alpha, uninit, seed).map_err(TestCaseError::fail)?;
    }
}

/// A product into an uninitialised `C` must not read it, so it refuses `beta != 0`.
#[test]
#[should_panic(expected = "an uninitialised C needs beta == 0")]
fn uninitialised_c_refuses_beta() {
    let a = [1.0f32; 4];
    let mut out = [std::mem::MaybeUninit::<f32>::uninit(); 4];
    gemm(
        1.0,
        MatRef::row_major(&a, 2, 2),
        MatRef::row_major(&a, 2, 2),
        1.0,
        MatMut::uninit(&mut out, 2, 2, 2),
        Parallelism::Sequential,
    );
}

/// A gathered view rejects an index past the end of its data.
#[test]
#[should_panic(expected = "row index 3 is past the 3 rows")]
fn gathered_rows_check_their_indices() {
    let data = [0.0; 6];
    let _ = MatRef::gathered_rows(&data, &[0, 3], 2);
}

/// `A B^T` with B's rows contiguous (a layer's `dY W^T`) for every combination of the given
/// sizes, with and without reading C, on one thread and on two (which split B's rows between
/// them when the product is large enough).
fn check_transposed_b(ms: &[usize], ks: &[usize], ns: &[usize], mut seed: u64) {
    for &m in ms {
        for &k in ks {
            for &n in ns {
                for (alpha, beta) in [(1.0, 0.0), (0.7, -1.3)] {
                    for threads in [1, 2] {
                        seed += 1;
                        let (ta, tb) = (Transpose::No, Transpose::Yes);
                        check_cpu(threads, m, k, n, ta, tb, alpha, beta, seed).unwrap();
                    }
                }
            }
        }
    }
}

/// A few rows of A against a transposed B whose rows are contiguous: the dot-product path on
/// AVX-512 machines, for every row count up to past its limit of 16, block edges of 4 x 4 and
/// depths across the 16-lane vector width.
#[test]
fn few_rows_times_transposed_b_match_reference() {
    let ms: Vec<usize> = (1..=17).collect();
    check_transposed_b(&ms, &[1, 15, 16, 17, 40, 300], &[1, 3, 4, 5, 9], 0);
}

/// Up to a few hundred rows of A against a transposed B whose rows are contiguous: on AVX-512
/// machines, the path that reads B's rows in place and stores its tiles transposed (up to
/// 128 rows), across its 32-row strips, its 12-row tiles of B and its 512-deep passes, and the
/// packed path just past it.
#[test]
fn tens_of_rows_times_transposed_b_match_reference() {
    check_transposed_b(
        &[17, 31, 32, 33, 64, 100, 128, 129],
        &[1, 17, 512, 513, 1100],
        &[1, 11, 12, 13, 40],
        1000,
    );
}

/// A few rows of A against a transposed B large enough to be split across two threads (B's
/// rows shared out in runs of whole 12-row tiles, an odd count included), for the row counts of
/// both in-place paths.
#[test]
fn few_rows_times_wide_transposed_b_match_reference() {
    check_transposed_b(&[1, 5, 16, 17, 100], &[700], &[517, 1000], 2000);
}

/// Shapes that cross the block sizes (depth blocks of 256, row blocks of 240, column chunks
/// of 512) and the switch between reading B in place and packing it.
#[test]
fn block_edges_match_reference() {
    // All but (13, 385, 33) are large enough to be split across two threads; (5, 800, 1100)
    // has a single row tile, so two threads split its columns.
    let shapes = [
        (300, 600, 70),
        (1000, 60, 40),
        (13, 385, 33),
        (5, 800, 1100),
        (481, 17, 515),
        (241, 769, 31),
        // B is read in place up to 720 rows per task (three row blocks) and packed past it.
        (720, 300, 40),
        (721, 17, 70),
    ];
    let mut seed = 0;
    for &(m, k, n) in &shapes {
        for ta in [Transpose::No, Transpose::Yes] {
            for tb in [Transpose::No, Transpose::Yes] {
                for threads in [1, 2] {
                    for (alpha, beta) in [(1.0, 0.0), (-0.5, 0.75)] {
                        seed += 1;
                        if let Err(e) = check_cpu(threads, m, k, n, ta, tb, alpha, beta, seed) {
                            panic!("{e}");
                        }
                    }
                }
            }
        }
    }
}

/// `k == 0`: `C = beta * C`, and zeros (not NaN) when `beta == 0`.
#[test]
fn empty_inner_dimension_scales_c() {
    for threads in [1, 2] {
        let cpu = cpu(threads);
        let a = cpu.zeros([3, 0]);
        let b = cpu.zeros([0, 4]);
        let mut c = cpu.upload([3, 4], &[2.0; 12]);
        cpu.matmul(1.0, &a, Transpose::No, &b, Transpose::No, 0.5, &mut c);
        assert_eq!(cpu.download(&c).unwrap(), vec![1.0; 12]);
        cpu.fill(&mut c, f32::NAN);
        cpu.matmul(1.0, &a, Transpose::No, &b, Transpose::No, 0.0, &mut c);
        assert_eq!(cpu.download(&c).unwrap(), vec![0.0; 12]);
    }
}

/// One packed B reused for several A blocks (different row counts, transposed or not), with
/// strided views of A and C, in one and two threads.
#[test]
fn packed_rhs_reuse_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // (600, 520) is large enough for the packing itself to run on two threads.
    for &(k, n) in &[(64, 48), (400, 100), (3, 1), (130, 513), (600, 520)] {
        for tb in [Transpose::No, Transpose::Yes] {
            let [br, bc] = tb.apply([k, n]);
            let b = random(&mut rng, k * n);
            let bview = MatRef::row_major(&b, br, bc);
            let bview = if tb == Transpose::Yes {
                bview.t()
            } else {
                bview
            };
            let (b_op, _) = materialise(&b, br, bc, tb);
            for (threads, par) in [
                (1, Parallelism::Sequential),
                (2, Parallelism::Rayon(2)),
                (2, Parallelism::Team(team())),
            ] {
                let packed = pool(threads).install(|| PackedRhs::new(bview, par));
                assert_eq!((packed.k(), packed.n()), (k, n));
                for &m in &[1, 5, 12, 16, 64, 250] {
                    let (alpha, beta) = (rng.random_range(-2.0..2.0), rng.random_range(-1.0..1.0));
                    // A lives in a wider buffer (row stride k + 3) and C too (row stride n + 2):
                    // the padding of C must come back untouched.
                    let a_store = random(&mut rng, m * (k + 3));
                    let a_view = MatRef::new(&a_store, m, k, k + 3, 1);
                    let a_op: Vec<f32> = (0..m)
                        .flat_map(|i| a_store[i * (k + 3)..i * (k + 3) + k].to_vec())
                        .collect();
                    let c0 = random(&mut rng, m * (n + 2));
                    let mut c_store = c0.clone();
                    pool(threads).install(|| {
                        gemm_packed(
                            alpha,
                            a_view,
                            &packed,
                            beta,
                            MatMut::new(&mut c_store, m, n, n + 2),
                            par,
                        )
                    });
                    let c_old: Vec<f32> = (0..m)
                        .flat_map(|i| c0[i * (n + 2)..i * (n + 2) + n].to_vec())
                        .collect();
                    let (want, tol) = oracle(alpha, &a_op, &b_op, beta, &c_old, m, k, n);
                    let got: Vec<f32> = (0..m)
                        .flat_map(|i| c_store[i * (n + 2)..i * (n + 2) + n].to_vec())
                        .collect();
                    let what = format!("packed m={m} k={k} n={n} {tb:?} threads={threads}");
                    if let Err(e) = compare(&what, &got, &want, &tol) {
                        panic!("{e}");
                    }
                    for i in 0..m {
                        assert_eq!(
                            c_store[i * (n + 2) + n..(i + 1) * (n + 2)],
                            c0[i * (n + 2) + n..(i + 1) * (n + 2)],
                            "{what}: padding of C was written"
                        );
                    }
                }
            }
        }
    }
}

/// The strided entry point with a transposed A view and a strided (non-unit) B view, which
/// takes the general packing paths.
#[test]
fn general_strides_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (m, k, n) = (37, 45, 29);
    // A^T stored as [k, m]; B stored with both strides above one (every other column of a
    // [k, 2n] buffer).
    let a_t = random(&mut rng, k * m);
    let b_wide = random(&mut rng, k * 2 * n);
    let b_op: Vec<f32> = (0..k)
        .flat_map(|p| (0..n).map(move |j| (p, j)))
        .map(|(p, j)| b_wide[p * 2 * n + 2 * j])
        .collect();
    let (a_op, _) = materialise(&a_t, k, m, Transpose::Yes);
    for par in [Parallelism::Sequential, Parallelism::Rayon(2)] {
        let mut c = vec![f32::NAN; m * n];
        pool(2).install(|| {
            gemm(
                1.5,
                MatRef::row_major(&a_t, k, m).t(),
                MatRef::new(&b_wide, k, n, 2 * n, 2),
                0.0,
                MatMut::row_major(&mut c, m, n),
                par,
            )
        });
        let (want, tol) = oracle(1.5, &a_op, &b_op, 0.0, &vec![0.0; m * n], m, k, n);
        if let Err(e) = compare("general strides", &c, &want, &tol) {
            panic!("{e}");
        }
    }
}

/// A deliberately wrong result must be caught by the comparison (the tests can fail).
#[test]
fn comparison_rejects_wrong_results() {
    let (want, tol) = oracle(1.0, &[1.0, 2.0], &[3.0, 4.0], 0.0, &[0.0], 1, 2, 1);
    assert!(compare("exact", &[11.0], &want, &tol).is_ok());
    assert!(compare("off", &[11.01], &want, &tol).is_err());
    assert!(compare("nan", &[f32::NAN], &want, &tol).is_err());
}

#[test]
#[should_panic(expected = "shapes do not chain")]
fn mismatched_shapes_panic() {
    let (a, b) = ([0.0; 6], [0.0; 6]);
    let mut c = [0.0; 4];
    gemm(
        1.0,
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&b, 2, 3),
        0.0,
        MatMut::row_major(&mut c, 2, 2),
        Parallelism::Sequential,
    );
}

/// The whole suite again in a child process restricted to the portable kernel and packing
/// ([`KERNEL_VAR`]), which AVX-512 machines would otherwise never run past the microkernel
/// test.
#[test]
fn portable_kernels_pass_the_suite() {
    if std::env::var(KERNEL_VAR).is_ok() {
        return; // Already the child.
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .env(KERNEL_VAR, "portable")
        .args([
            "--skip",
            "portable_kernels_pass_the_suite",
            "--test-threads",
            "2",
        ])
        .output()
        .expect("the test binary runs");
    assert!(
        out.status.success(),
        "the suite failed with {KERNEL_VAR}=portable:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
