//! `SparseLinear` and the L1 penalty: finite differences of every backward, and the sparse and
//! dense paths of the layer computing the same values.

use modula_cpu::Cpu;
use modula_nn::gradcheck::{self, GradCheck};
use modula_nn::{
    Ctx, Dispatch, Grads, Init, Module, ParamStore, SparseLinear, l1_penalty, l1_penalty_backward,
    l1_weights,
};
use modula_tensor::Backend;
use proptest::prelude::*;
use rand::SeedableRng;

/// Pre-activations whose ReLU has roughly `density` non-zeros, kept at least 0.1 away from
/// the kink at 0 so that finite differences never cross it.
fn pre_activation(len: usize, density: f64, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let magnitude = rand::Rng::random_range(&mut rng, 0.1f32..1.5);
            if rand::Rng::random_bool(&mut rng, density) {
                magnitude
            } else {
                -magnitude
            }
        })
        .collect()
}

fn layer(
    cpu: &Cpu,
    k: usize,
    m: usize,
    seed: u64,
    dispatch: Dispatch,
) -> (SparseLinear, ParamStore<Cpu>) {
    let mut params = ParamStore::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let l = SparseLinear::new(cpu, &mut params, "fc", k, m, Init::Glorot, &mut rng);
    // A non-zero bias, so that its gradient and its place in the forward are tested.
    *params.get_mut(l.bias) = cpu.upload([1, m], &pre_activation(m, 0.5, seed + 9));
    (l.with_dispatch(dispatch), params)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn both_paths_pass_finite_differences(
        n in 1usize..4,
        k in 1usize..7,
        m in 1usize..5,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        seed in any::<u64>(),
    ) {
        let cpu = Cpu::with_threads(1);
        for dispatch in [Dispatch::Sparse, Dispatch::Dense] {
            let (l, mut params) = layer(&cpu, k, m, seed, dispatch);
            let z = cpu.upload([n, k], &pre_activation(n * k, density, seed));
            let cfg = GradCheck { eps: 1e-2, abs: 1e-3, rel: 1e-2 };
            let r = gradcheck::check_module(&cpu, &l, &mut params, z, seed, &cfg);
            prop_assert!(r.is_ok(), "{dispatch:?}: {}", r.unwrap_err());
        }
    }

    #[test]
    fn the_sparse_and_dense_paths_compute_the_same_values(
        n in prop_oneof![Just(1usize), 2usize..40],
        k in 1usize..150,
        m in 1usize..150,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        seed in any::<u64>(),
    ) {
        let cpu = Cpu::with_threads(2);
        let z = cpu.upload([n, k], &pre_activation(n * k, density, seed));
        let dy = cpu.upload([n, m], &pre_activation(n * m, 0.5, seed + 1));
        let mut results = Vec::new();
        for dispatch in [Dispatch::Sparse, Dispatch::Dense, Dispatch::Auto] {
            let (l, params) = layer(&cpu, k, m, seed, dispatch);
            let (y, cache) = l.forward(&cpu, &params, &z, &mut Ctx::eval());
            match dispatch {
                Dispatch::Sparse => prop_assert!(cache.is_sparse()),
                Dispatch::Dense => prop_assert!(!cache.is_sparse()),
                _ => {}
            }
            let mut g = Grads::new();
            let dz = l.backward(&cpu, &params, cache, &dy, &mut g);
            let get = |t: &<Cpu as Backend>::Tensor| cpu.download(t).unwrap();
            results.push([get(&y), get(&dz), get(g.get(l.weight).unwrap()), get(g.get(l.bias).unwrap())]);
        }
        for other in &results[1..] {
            for (what, (a, b)) in ["y", "dz", "dW", "db"].iter().zip(results[0].iter().zip(other)) {
                for (x, y) in a.iter().zip(b) {
                    prop_assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{}: {} vs {}", what, x, y);
                }
            }
        }
    }

    #[test]
    fn the_l1_penalty_passes_finite_differences(
        n in 1usize..4,
        k in 1usize..6,
        lambda in 0.0f32..2.0,
        seed in any::<u64>(),
    ) {
        let cpu = Cpu::with_threads(1);
        let x = cpu.upload([n, k], &pre_activation(n * k, 0.5, seed));
        let weights: Vec<f32> = pre_activation(n, 0.5, seed + 1);
        let d = cpu.upload([n, 1], &weights);
        let mut params = ParamStore::<Cpu>::new();
        let r = gradcheck::check(
            &cpu,
            &mut params,
            &mut [x],
            &GradCheck::default(),
            |b, _, xs| gradcheck::weighted_sum(b, &l1_penalty(b, &xs[0], lambda), &weights),
            |b, _, xs| (Grads::new(), vec![l1_penalty_backward(b, &xs[0], &d, lambda)]),
        );
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

#[test]
fn the_weight_penalty_adds_lambda_sign_and_reports_the_sum() {
    let cpu = Cpu::with_threads(1);
    let mut params = ParamStore::new();
    let w = params.add("w", cpu.upload([2, 2], &[1.0, -2.0, 0.0, 0.5]));
    let mut g = Grads::new();
    let total = l1_weights(&cpu, &params, &[w], 0.1, &mut g).unwrap();
    assert!((total - 0.35).abs() < 1e-6, "{total}");
    assert_eq!(
        cpu.download(g.get(w).unwrap()).unwrap(),
        vec![0.1, -0.1, 0.0, 0.1]
    );
}

#[test]
fn auto_dispatch_follows_the_density() {
    let cpu = Cpu::with_threads(1);
    let (l, params) = layer(&cpu, 64, 8, 3, Dispatch::Auto);
    for (density, sparse) in [(0.05, true), (0.95, false)] {
        let z = cpu.upload([32, 64], &pre_activation(32 * 64, density, 4));
        let (_, cache) = l.forward(&cpu, &params, &z, &mut Ctx::eval());
        assert_eq!(cache.is_sparse(), sparse, "density {density}");
    }
}
