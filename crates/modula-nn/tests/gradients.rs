//! Finite-difference checks of every layer's and loss's backward pass.

use modula_cpu::Cpu;
use modula_nn::gradcheck::{GradCheck, check, check_module, weighted_sum};
use modula_nn::{Activation, Init, Linear, ParamStore, gaussian_nll, gaussian_nll_backward};
use modula_nn::{Conv2d, Dropout, Embedding, Flatten, Grads, Gru, GruCell, MaxPool2d};
use modula_nn::{gru_gates_backward, gru_gates_forward};
use modula_nn::{softmax_cross_entropy, softmax_cross_entropy_backward};
use modula_tensor::{Backend, UnaryOp, Window2d};
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
            |b, _, xs| weighted_sum(b, &softmax_cross_entropy(b, b.duplicate(&xs[0]), &targets).0, &weights),
            |b, _, xs| {
                let (_, logp) = softmax_cross_entropy(b, b.duplicate(&xs[0]), &targets);
                (Grads::new(), vec![softmax_cross_entropy_backward(b, &logp, &targets, &w)])
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
            |b, _, xs| weighted_sum(b, &gaussian_nll(b, &xs[0], &target, var), &weights),
            |b, _, xs| (Grads::new(), vec![gaussian_nll_backward(b, &xs[0], &target, var, &w)]))
            .map_err(TestCaseError::fail)?;
    }
}

/// Replaces every parameter by uniform values in `[-scale, scale]`, so that zero-initialised
/// biases do not hide a wrong bias gradient.
fn randomise(b: &Cpu, params: &mut ParamStore<Cpu>, seed: u64, scale: f32) {
    let ids: Vec<_> = params.ids().collect();
    for (k, id) in ids.into_iter().enumerate() {
        let shape = b.shape(params.get(id));
        let values = data(seed ^ (k as u64 + 11), shape[0] * shape[1], -scale, scale);
        *params.get_mut(id) = b.upload(shape, &values);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn embedding_backward(vocab in 1usize..6, dim in 1usize..5, n in 1usize..8, seed in any::<u64>()) {
        let b = cpu();
        let mut params = ParamStore::new();
        let emb = Embedding::new(&b, &mut params, "emb", vocab, dim, Init::Normal { std: 0.5 }, &mut ChaCha8Rng::seed_from_u64(seed));
        // More ids than rows for small vocabularies, so repeated ids are exercised.
        let ids: Vec<u32> = (0..n).map(|i| ((seed as usize / 3 + 5 * i) % vocab) as u32).collect();
        let w = data(seed + 1, n * dim, -1.0, 1.0);
        let dy = b.upload([n, dim], &w);
        check(&b, &mut params, &mut [], &GradCheck::default(),
            |b, p, _| weighted_sum(b, &emb.forward(b, p, &ids), &w),
            |b, _, _| {
                let mut g = Grads::new();
                emb.backward(b, &ids, &dy, &mut g);
                (g, vec![])
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dropout_backward(n in 1usize..5, d in 1usize..7, p in 0.0f32..0.9, seed in any::<u64>()) {
        // check_module seeds every forward pass identically, so the mask is fixed.
        let b = cpu();
        let x = b.upload([n, d], &data(seed, n * d, -1.0, 1.0));
        check_module(&b, &Dropout::new(p), &mut ParamStore::new(), x, seed, &GradCheck::default())
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn flatten_backward(n in 1usize..4, d in 1usize..6, seed in any::<u64>()) {
        let b = cpu();
        let x = b.upload([n, d], &data(seed, n * d, -1.0, 1.0));
        check_module(&b, &Flatten, &mut ParamStore::new(), x, seed, &GradCheck::default())
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv2d_backward(
        n in 1usize..3, height in 1usize..6, width in 1usize..6, channels in 1usize..4,
        out_channels in 1usize..4, kernel in 1usize..4, stride in 1usize..3, padding in 0usize..3,
        seed in any::<u64>(),
    ) {
        // Shrink the kernel to the padded input, so that every drawn geometry is valid.
        let kernel_h = kernel.min(height + 2 * padding);
        let kernel_w = kernel.min(width + 2 * padding);
        let window = Window2d { height, width, channels, kernel_h, kernel_w, stride, padding };
        let b = cpu();
        let mut params = ParamStore::new();
        let conv = Conv2d::new(&b, &mut params, "conv", window, out_channels, &mut ChaCha8Rng::seed_from_u64(seed));
        randomise(&b, &mut params, seed, 0.5);
        let x = b.upload([n, window.in_len()], &data(seed + 2, n * window.in_len(), -1.0, 1.0));
        check_module(&b, &conv, &mut params, x, seed, &GradCheck::default()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn max_pool2d_backward(
        n in 1usize..3, height in 1usize..6, width in 1usize..6, channels in 1usize..4,
        kernel in 1usize..4, stride in 1usize..3, seed in any::<u64>(),
    ) {
        let kernel = kernel.min(height).min(width);
        let pool = MaxPool2d::new(height, width, channels, kernel, stride);
        let b = cpu();
        // Distinct values 0.05 apart (more than 2 * eps), so that no perturbation of the check
        // changes which input of a window is the maximum.
        let len = n * pool.window.in_len();
        let mut values: Vec<f32> = (0..len).map(|i| i as f32 * 0.05 - 1.0).collect();
        {
            use rand::seq::SliceRandom;
            values.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        let x = b.upload([n, pool.window.in_len()], &values);
        check_module(&b, &pool, &mut ParamStore::new(), x, seed, &GradCheck::default()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn gru_gates_backward_matches(n in 1usize..4, h in 1usize..5, seed in any::<u64>()) {
        let b = cpu();
        let w = data(seed + 1, n * h, -1.0, 1.0);
        let dh = b.upload([n, h], &w);
        let mut inputs = [
            b.upload([n, 4 * h], &data(seed, n * 4 * h, -2.0, 2.0)),
            b.upload([n, h], &data(seed + 2, n * h, -1.0, 1.0)),
        ];
        check(&b, &mut ParamStore::new(), &mut inputs, &GradCheck::default(),
            |b, _, xs| weighted_sum(b, &gru_gates_forward(b, &xs[0], &xs[1]).0, &w),
            |b, _, xs| {
                let (_, cache) = gru_gates_forward(b, &xs[0], &xs[1]);
                let (d_gates, dh_prev) = gru_gates_backward(b, &cache, &dh);
                (Grads::new(), vec![d_gates, dh_prev])
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn gru_cell_backward(n in 1usize..4, d_in in 1usize..5, h in 1usize..5, seed in any::<u64>()) {
        let b = cpu();
        let mut params = ParamStore::new();
        let cell = GruCell::new(&b, &mut params, "gru", d_in, h, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        randomise(&b, &mut params, seed, 0.7);
        let w = data(seed + 1, n * h, -1.0, 1.0);
        let dh = b.upload([n, h], &w);
        let mut inputs = [
            b.upload([n, d_in], &data(seed + 2, n * d_in, -1.0, 1.0)),
            b.upload([n, h], &data(seed + 3, n * h, -1.0, 1.0)),
        ];
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| weighted_sum(b, &cell.step(b, p, &xs[0], &xs[1]).0, &w),
            |b, p, xs| {
                let (_, cache) = cell.step(b, p, &xs[0], &xs[1]);
                let mut g = Grads::new();
                let (dx, dh_prev) = cell.step_backward(b, p, cache, &dh, &mut g);
                (g, vec![dx, dh_prev])
            }).map_err(TestCaseError::fail)?;
    }

    /// BPTT over `steps` steps from a non-zero `h0`, with losses on every hidden state and,
    /// optionally, an extra one on the last; checks every input, `h0` and every parameter.
    #[test]
    fn gru_seq_backward(
        steps in 1usize..5, n in 1usize..3, d_in in 1usize..4, h in 1usize..4,
        last_loss in any::<bool>(), seed in any::<u64>(),
    ) {
        let b = cpu();
        let mut params = ParamStore::new();
        let gru = Gru::new(&b, &mut params, "gru", d_in, h, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        randomise(&b, &mut params, seed, 0.7);
        let ws: Vec<Vec<f32>> = (0..steps).map(|t| data(seed + 100 + t as u64, n * h, -1.0, 1.0)).collect();
        let w_last = data(seed + 99, n * h, -1.0, 1.0);
        let dhs: Vec<_> = ws.iter().map(|w| b.upload([n, h], w)).collect();
        let dh_last = b.upload([n, h], &w_last);
        // Inputs: x_1..x_T, then h0.
        let mut inputs: Vec<_> = (0..steps)
            .map(|t| b.upload([n, d_in], &data(seed + 200 + t as u64, n * d_in, -1.0, 1.0)))
            .collect();
        inputs.push(b.upload([n, h], &data(seed + 3, n * h, -1.0, 1.0)));
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| {
                let (hs, _) = gru.forward_seq(b, p, &xs[..steps], &xs[steps]);
                let mut total: f64 = hs.iter().zip(&ws).map(|(h, w)| weighted_sum(b, h, w)).sum();
                if last_loss {
                    total += weighted_sum(b, &hs[steps - 1], &w_last);
                }
                total
            },
            |b, p, xs| {
                let (_, cache) = gru.forward_seq(b, p, &xs[..steps], &xs[steps]);
                let mut g = Grads::new();
                let (mut dxs, dh0) = gru.backward_seq(b, p, cache, &dhs, last_loss.then_some(&dh_last), &mut g);
                dxs.push(dh0);
                (g, dxs)
            }).map_err(TestCaseError::fail)?;
    }

    /// Only the final state feeds the loss: `dhs` empty, gradient through `dh_last` alone.
    #[test]
    fn gru_seq_backward_last_state_only(steps in 1usize..5, seed in any::<u64>()) {
        let (n, d_in, h) = (2, 2, 3);
        let b = cpu();
        let mut params = ParamStore::new();
        let gru = Gru::new(&b, &mut params, "gru", d_in, h, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        randomise(&b, &mut params, seed, 0.7);
        let w_last = data(seed + 99, n * h, -1.0, 1.0);
        let dh_last = b.upload([n, h], &w_last);
        let mut inputs: Vec<_> = (0..steps)
            .map(|t| b.upload([n, d_in], &data(seed + 200 + t as u64, n * d_in, -1.0, 1.0)))
            .collect();
        inputs.push(b.upload([n, h], &data(seed + 3, n * h, -1.0, 1.0)));
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| weighted_sum(b, gru.forward_seq(b, p, &xs[..steps], &xs[steps]).0.last().unwrap(), &w_last),
            |b, p, xs| {
                let (_, cache) = gru.forward_seq(b, p, &xs[..steps], &xs[steps]);
                let mut g = Grads::new();
                let (mut dxs, dh0) = gru.backward_seq(b, p, cache, &[], Some(&dh_last), &mut g);
                dxs.push(dh0);
                (g, dxs)
            }).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn cross_entropy_value_is_negative_log_softmax() {
    let b = cpu();
    let logits = b.upload([1, 3], &[1.0, 2.0, 3.0]);
    let (nll, _) = softmax_cross_entropy(&b, logits, &[2]);
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
            (Grads::new(), vec![g])
        },
    );
    assert!(result.is_err());
}
