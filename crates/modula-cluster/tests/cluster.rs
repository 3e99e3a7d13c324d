//! Co-activation counts against a brute-force count, and partitions: exact balanced
//! permutations from every method, planted structure recovered, bad sizes refused.

use modula_cluster::{ClusterError, CoActivation, GroupedProduct, Method, Partition};
use modula_cpu::Cpu;
use modula_sparse::SparseBackend;
use modula_tensor::Reference;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `count[i][j]`: rows where both activations are `> 0`, by three nested loops.
fn brute_force(h: &[f32], rows: usize, width: usize) -> Vec<u64> {
    let mut counts = vec![0u64; width * width];
    for r in 0..rows {
        for i in 0..width {
            for j in 0..width {
                if h[r * width + i] > 0.0 && h[r * width + j] > 0.0 {
                    counts[i * width + j] += 1;
                }
            }
        }
    }
    counts
}

/// Counts of `chunks` (each `[rows, width]`) added one after another on `b`.
fn counted<B: SparseBackend>(b: &B, chunks: &[Vec<f32>], width: usize) -> CoActivation {
    let mut co = CoActivation::new(width);
    for c in chunks {
        co.add(b, &b.upload([c.len() / width, width], c)).unwrap();
    }
    co
}

/// Random activations: each entry is active with probability `density`, else zero or
/// negative (a pre-activation the ReLU would zero).
fn activations(seed: u64, rows: usize, width: usize, density: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * width)
        .map(|_| {
            if rng.random_bool(density) {
                rng.random_range(0.01..2.0)
            } else if rng.random_bool(0.5) {
                0.0
            } else {
                -rng.random_range(0.0..2.0f32)
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The streamed counts equal the brute-force count over all chunks, on the sparse path
    /// (low density) and the dense GEMM path (high density), on the reference backend and on
    /// the CPU backend.
    #[test]
    fn counts_equal_brute_force(
        seed in 0u64..1000,
        width in 1usize..40,
        chunk_rows in proptest::collection::vec(0usize..30, 1..4),
        density in prop_oneof![Just(0.05), Just(0.3), Just(0.9)],
    ) {
        let chunks: Vec<Vec<f32>> = chunk_rows
            .iter()
            .enumerate()
            .map(|(c, &r)| activations(seed * 7 + c as u64, r, width, density))
            .collect();
        let all: Vec<f32> = chunks.concat();
        let rows: usize = chunk_rows.iter().sum();
        let expected = brute_force(&all, rows, width);
        for co in [counted(&Reference, &chunks, width), counted(&Cpu::with_threads(2), &chunks, width)] {
            prop_assert_eq!(co.rows(), rows as u64);
            prop_assert_eq!(co.counts(), expected.as_slice());
        }
    }

    /// Every method gives an exact permutation with equal groups, whose order lists each
    /// group's members; consecutive blocks keep the neurons' own order.
    #[test]
    fn partitions_are_balanced_permutations(
        seed in 0u64..1000,
        groups in 1usize..6,
        size in 1usize..9,
    ) {
        let width = groups * size;
        let co = counted(&Reference, &[activations(seed, 50, width, 0.3)], width);
        let points = activations(seed + 1, width, 5, 0.8);
        let parts = [
            Partition::metis(&co, groups, seed).unwrap(),
            Partition::balanced_kmeans(&points, 5, groups, seed).unwrap(),
            Partition::random(width, groups, seed).unwrap(),
            Partition::blocks(width, groups).unwrap(),
        ];
        for p in parts {
            prop_assert_eq!(p.width(), width);
            prop_assert_eq!(p.groups(), groups);
            let mut seen = p.order().to_vec();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..width as u32).collect::<Vec<_>>());
            if p == Partition::blocks(width, groups).unwrap() {
                let identity: Vec<u32> = (0..width as u32).collect();
                prop_assert_eq!(p.order(), identity.as_slice());
            }
            for g in 0..groups {
                prop_assert_eq!(p.members(g).len(), size);
                for &i in p.members(g) {
                    prop_assert_eq!(p.group_of(i as usize), g);
                }
            }
        }
    }
}

/// Planted groups: each input activates (part of) one hidden group only, and the neurons are
/// listed in a scrambled order. METIS must find the planted groups exactly; a random
/// partition captures about `(s - 1) / (d - 1)` of the co-activation.
#[test]
fn metis_recovers_planted_groups() {
    let (groups, size) = (8, 16);
    let width = groups * size;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let planted: Vec<u32> = {
        let mut p = Partition::random(width, groups, 11)
            .unwrap()
            .order()
            .to_vec();
        p.iter_mut().for_each(|i| *i = (*i as usize / size) as u32);
        p
    };
    let rows = 400;
    let mut h = vec![0.0f32; rows * width];
    for r in 0..rows {
        let g = rng.random_range(0..groups as u32);
        for i in 0..width {
            if planted[i] == g && rng.random_bool(0.6) {
                h[r * width + i] = 1.0;
            }
        }
    }
    let co = counted(&Cpu::with_threads(1), &[h], width);
    let found = Partition::metis(&co, groups, 0).unwrap();
    let truth = Partition::from_assignment(groups, planted).unwrap();
    assert!((truth.within_fraction(&co) - 1.0).abs() < 1e-12);
    assert!((found.within_fraction(&co) - 1.0).abs() < 1e-12);
    let random = Partition::random(width, groups, 5)
        .unwrap()
        .within_fraction(&co);
    assert!(random < 0.3, "a random partition captured {random}");
}

/// Balanced k-means on vectors drawn around `groups` well-separated directions puts each
/// direction's vectors in one group.
#[test]
fn kmeans_recovers_planted_clusters() {
    let (groups, size, dim) = (4, 10, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut points = Vec::new();
    let mut truth = Vec::new();
    for i in 0..groups * size {
        let g = (i * 7) % groups;
        truth.push(g as u32);
        for d in 0..dim {
            let centre = if d == g { 5.0 } else { 0.0 };
            points.push(centre + rng.random_range(-0.5..0.5f32));
        }
    }
    let p = Partition::balanced_kmeans(&points, dim, groups, 1).unwrap();
    for i in 0..truth.len() {
        for j in 0..truth.len() {
            assert_eq!(
                truth[i] == truth[j],
                p.group_of(i) == p.group_of(j),
                "neurons {i} and {j}"
            );
        }
    }
}

#[test]
fn bad_sizes_are_refused() {
    assert_eq!(
        Partition::random(10, 3, 0),
        Err(ClusterError::Unbalanced {
            width: 10,
            groups: 3
        })
    );
    assert!(matches!(
        Partition::from_assignment(2, vec![0, 0, 0, 1]),
        Err(ClusterError::Assignment(_))
    ));
    assert!(matches!(
        Partition::from_assignment(2, vec![0, 2, 1, 1]),
        Err(ClusterError::Assignment(_))
    ));
    assert_eq!(Method::from_name("metis"), Some(Method::Metis));
    assert_eq!(Method::from_name("spectral"), None);
}

/// Which groups are active follows the activations' signs.
#[test]
fn active_groups_follow_the_activations() {
    let p = Partition::from_assignment(2, vec![0, 1, 0, 1]).unwrap();
    assert_eq!(p.active_groups(&[0.0, 0.5, -1.0, 0.0]), vec![false, true]);
    assert_eq!(p.active_groups(&[0.0, 0.0, 0.0, 0.0]), vec![false, false]);
}

/// Random ReLU activations of `rows x groups * size` where each (row, group) block is all zero
/// with probability one half, a random weight and a non-zero bias.
fn grouped_case(seed: u64, rows: usize, groups: usize, size: usize, m: usize) -> [Vec<f32>; 3] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let width = groups * size;
    let mut a = vec![0.0f32; rows * width];
    // Blocks are planted on a scrambled neuron order, as a partition would find them.
    let p = Partition::random(width, groups, seed).unwrap();
    for r in 0..rows {
        for g in 0..groups {
            if rng.random_bool(0.5) {
                for &i in p.members(g) {
                    if rng.random_bool(0.7) {
                        a[r * width + i as usize] = rng.random_range(0.01..3.0);
                    }
                }
            }
        }
    }
    let w = (0..width * m)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let bias = (0..m).map(|_| rng.random_range(0.1..1.0)).collect();
    [a, w, bias]
}

/// The output of a layer's next product with the groups without an active neuron skipped,
/// computed by the engine's block-sparse product, against the same product with every group
/// computed: bit-identical (the exactness claim), and equal to the plain dense product up to
/// the order of summation. Fewer blocks are multiplied with skipping.
fn skip_is_exact_on<B: SparseBackend>(b: &B, seed: u64) {
    let (rows, groups, size, m) = (23, 6, 5, 7);
    let width = groups * size;
    let [a, w, bias] = grouped_case(seed, rows, groups, size, m);
    let partition = Partition::random(width, groups, seed).unwrap();
    let (at, wt, bt) = (
        b.upload([rows, width], &a),
        b.upload([width, m], &w),
        b.upload([1, m], &bias),
    );
    let product = GroupedProduct::new(b, &partition, &wt, &bt);
    let skipped = product.forward(b, &at, true).unwrap();
    let full = product.forward(b, &at, false).unwrap();
    assert_eq!(full.blocks, rows * groups);
    assert!(skipped.blocks < full.blocks, "the case has inactive groups");
    let (ys, yf) = (
        b.download(&skipped.output).unwrap(),
        b.download(&full.output).unwrap(),
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&ys), bits(&yf), "seed {seed}");
    for r in 0..rows {
        for j in 0..m {
            let dense: f32 = bias[j]
                + (0..width)
                    .map(|k| a[r * width + k] * w[k * m + j])
                    .sum::<f32>();
            assert!((dense - ys[r * m + j]).abs() <= 1e-4 * (1.0 + dense.abs()));
        }
    }
}

#[test]
fn skipping_inactive_groups_is_exact() {
    for seed in 0..20 {
        skip_is_exact_on(&Reference, seed);
        skip_is_exact_on(&Cpu::with_threads(2), seed);
    }
}
