//! Finite-difference checks of every layer's and loss's backward pass.

use modula_nn::gradcheck::{GradCheck, check, check_module};
use modula_nn::{Activation, Init, Linear, ParamStore, gaussian_nll, gaussian_nll_backward};
use modula_nn::{softmax_cross_entropy, softmax_cross_entropy_backward};
use modula_tensor::{Backend, Cpu, UnaryOp};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn cpu() -> Cpu {
    Cpu::with_threads(1)
}

fn data(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    use rand::Rng;
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn linear_backward(n in 1usize..6, d_in in 1usize..7, d_out in 1usize..7, seed in any::<u64>()) {
        let b = cpu();
        let mut params = ParamStore::new();
        let layer = Linear::new(&b, &mut params, "fc", d_in, d_out, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        // A non-zero bias so that its gradient path is exercised from a generic point.
        *params.get_mut(layer.bias) = b.upload([1, d_out], &data(seed + 1, d_out, -1.0, 1.0));
        let x = b.upload([n, d_in], &data(seed + 2, n * d_in, -1.0, 1.0));
        check_module(&b, &layer, &mut params, x, seed, &GradCheck::default()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn activation_backward(n in 1usize..5, d in 1usize..6, op_index in 0usize..UnaryOp::ALL.len(), seed in any::<u64>()) {
        let op = UnaryOp::ALL[op_index];
        let b = cpu();
        // Keep inputs away from kinks (0 for relu/abs) and from the domain edge of log/sqrt,
        // where a central difference is not the derivative.
        let mut x = data(seed, n * d, 0.2, 1.5);
        let mut signs = ChaCha8Rng::seed_from_u64(seed + 3);
        if !matches!(op, UnaryOp::Log | UnaryOp::Sqrt) {
            use rand::Rng;
            x.iter_mut().for_each(|v| if signs.random_bool(0.5) { *v = -*v });
        }
        let x = b.upload([n, d], &x);
        check_module(&b, &Activation(op), &mut ParamStore::<Cpu>::new(), x, seed, &GradCheck::default())
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn cross_entropy_backward(n in 1usize..5, classes in 2usize..9, seed in any::<u64>()) {
        let b = cpu();
        let targets: Vec<u32> = (0..n).map(|i| ((seed as usize + 7 * i) % classes) as u32).collect();
        let weights = data(seed + 1, n, 0.1, 1.0);
        let w = b.upload([n, 1], &weights);
        let mut inputs = [b.upload([n, classes], &data(seed, n * classes, -3.0, 3.0))];
        check(&b, &mut ParamStore::<Cpu>::new(), &mut inputs, &GradCheck::default(),
            |b, _, xs| modula_nn::gradcheck::weighted_sum(b, &softmax_cross_entropy(b, &xs[0], &targets).0, &weights),
            |b, _, xs| {
                let (_, logp) = softmax_cross_entropy(b, &xs[0], &targets);
                (modula_nn::Grads::new(), vec![softmax_cross_entropy_backward(b, &logp, &targets, &w)])
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn gaussian_nll_backward_matches(n in 1usize..5, d in 1usize..5, var in 0.2f32..3.0, seed in any::<u64>()) {
        let b = cpu();
        let weights = data(seed + 1, n, 0.1, 1.0);
        let w = b.upload([n, 1], &weights);
        let target = b.upload([n, d], &data(seed + 2, n * d, -1.0, 1.0));
        let mut inputs = [b.upload([n, d], &data(seed, n * d, -1.0, 1.0))];
        check(&b, &mut ParamStore::<Cpu>::new(), &mut inputs, &GradCheck::default(),
            |b, _, xs| modula_nn::gradcheck::weighted_sum(b, &gaussian_nll(b, &xs[0], &target, var), &weights),
            |b, _, xs| (modula_nn::Grads::new(), vec![gaussian_nll_backward(b, &xs[0], &target, var, &w)]))
            .map_err(TestCaseError::fail)?;
    }
}

#[test]
fn cross_entropy_value_is_negative_log_softmax() {
    let b = cpu();
    let logits = b.upload([1, 3], &[1.0, 2.0, 3.0]);
    let (nll, _) = softmax_cross_entropy(&b, &logits, &[2]);
    let z: f32 = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
    let want = -(3.0f32.exp() / z).ln();
    assert!((b.download(&nll).unwrap()[0] - want).abs() < 1e-6);
}

#[test]
fn gaussian_nll_value_matches_formula() {
    let b = cpu();
    let mean = b.upload([1, 2], &[0.0, 1.0]);
    let target = b.upload([1, 2], &[1.0, 1.0]);
    let got = b.download(&gaussian_nll(&b, &mean, &target, 2.0)).unwrap()[0];
    let want = 0.5 * (1.0 / 2.0) + (2.0 * std::f32::consts::PI * 2.0).ln();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

#[test]
fn gradcheck_detects_a_wrong_backward() {
    // A deliberately wrong backward (gradient doubled) must be reported.
    let b = cpu();
    let mut inputs = [b.upload([1, 3], &[0.3, -0.2, 0.5])];
    let result = check(
        &b,
        &mut ParamStore::<Cpu>::new(),
        &mut inputs,
        &GradCheck::default(),
        |b, _, xs| {
            b.download(&xs[0])
                .unwrap()
                .iter()
                .map(|v| (v * v) as f64)
                .sum()
        },
        |b, _, xs| {
            let mut g = b.duplicate(&xs[0]);
            b.scale(&mut g, 4.0);
            (modula_nn::Grads::new(), vec![g])
        },
    );
    assert!(result.is_err());
}
