//! The controller: gradients, sampling distribution, greedy choice, normalisation.

use modula_cpu::Cpu;
use modula_modular::{Controller, Selection};
use modula_nn::gradcheck::{GradCheck, check, weighted_sum};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn setup(d_in: usize, m: usize, k: usize, seed: u64) -> (Cpu, ParamStore<Cpu>, Controller) {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = Controller::new(&b, &mut params, "ctrl", d_in, m, k, &mut rng);
    // Non-zero biases make the distributions uneven, which the sampling test needs.
    let bias: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.5..1.5)).collect();
    *params.get_mut(c.linear.bias) = b.upload([1, m * k], &bias);
    (b, params, c)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn log_prob_backward_matches_finite_differences(
        n in 1usize..5, d_in in 1usize..5, m in 1usize..5, k in 1usize..4, seed in any::<u64>(),
    ) {
        let (b, mut params, ctrl) = setup(d_in, m, k, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 3);
        let sel = Selection::new(k, (0..n * k).map(|_| rng.random_range(0..m as u32)).collect());
        let weights: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let d = b.upload([n, 1], &weights);
        let x: Vec<f32> = (0..n * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut inputs = [b.upload([n, d_in], &x)];
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| {
                let out = ctrl.forward(b, p, &xs[0]);
                weighted_sum(b, &ctrl.log_prob(b, &out, &sel), &weights)
            },
            |b, p, xs| {
                let out = ctrl.forward(b, p, &xs[0]);
                let mut g = Grads::new();
                let dx = ctrl.backward(b, p, out, &sel, &d, &mut g);
                (g, vec![dx])
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn greedy_is_argmax_and_probabilities_sum_to_one(
        n in 1usize..6, d_in in 1usize..5, m in 1usize..5, k in 1usize..3, seed in any::<u64>(),
    ) {
        let (b, params, ctrl) = setup(d_in, m, k, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 4);
        let x: Vec<f32> = (0..n * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        let out = ctrl.forward(&b, &params, &b.upload([n, d_in], &x));
        let greedy = out.greedy(&b).unwrap();
        let lp = b.download(&out.log_probs).unwrap();
        for (slot, row) in lp.chunks(m).enumerate() {
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(row[greedy.as_slice()[slot] as usize], best);
        }
        // Summing p(a | x) over all M^K selections gives 1 for every row.
        let total = m.pow(k as u32);
        let all: Vec<Selection> = (0..total).map(|code| {
            let mut c = code;
            let one: Vec<u32> = (0..k).map(|_| { let v = (c % m) as u32; c /= m; v }).collect();
            Selection::new(k, (0..n).flat_map(|_| one.clone()).collect())
        }).collect();
        let mut sums = vec![0.0f64; n];
        for sel in &all {
            let lp = b.download(&ctrl.log_prob(&b, &out, sel)).unwrap();
            for (s, l) in sums.iter_mut().zip(lp) {
                *s += (l as f64).exp();
            }
        }
        for s in sums {
            prop_assert!((s - 1.0).abs() < 1e-4, "probabilities sum to {}", s);
        }
    }
}

#[test]
fn samples_follow_the_controller_distribution() {
    // One input row repeated; each slot's empirical counts must fit its softmax (chi-square).
    let (m, k, d_in, draws) = (5, 2, 3, 4000);
    let (b, params, ctrl) = setup(d_in, m, k, 11);
    let x = b.upload([draws, d_in], &[0.3, -0.7, 0.5].repeat(draws));
    let out = ctrl.forward(&b, &params, &x);
    let sel = out.sample(&b, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    let lp = b.download(&out.log_probs).unwrap();
    for slot in 0..k {
        let probs: Vec<f64> = lp[slot * m..(slot + 1) * m]
            .iter()
            .map(|&l| (l as f64).exp())
            .collect();
        let mut counts = vec![0usize; m];
        for i in 0..draws {
            counts[sel.row(i)[slot] as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&probs)
            .map(|(&c, &p)| {
                let e = p * draws as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        // 99.9% quantile of chi-square with 4 degrees of freedom is 18.47.
        assert!(
            chi2 < 18.47,
            "slot {slot}: chi2 = {chi2}, counts {counts:?}, probs {probs:?}"
        );
    }
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let (b, params, ctrl) = setup(2, 4, 3, 1);
    let x = b.upload([50, 2], &vec![0.2; 100]);
    let out = ctrl.forward(&b, &params, &x);
    let s1 = out.sample(&b, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    let s2 = out.sample(&b, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    assert_eq!(s1, s2);
}
