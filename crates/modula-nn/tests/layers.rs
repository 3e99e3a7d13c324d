//! Forward values of the layers against direct host formulas, and their contracts.

use modula_cpu::Cpu;
use modula_nn::{
    Conv2d, Ctx, Dropout, Embedding, Flatten, Gru, GruCell, Init, MaxPool2d, Module, ParamStore,
};
use modula_tensor::{Backend, Window2d};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cpu() -> Cpu {
    Cpu::with_threads(1)
}

fn data(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Conv2d equals the textbook sum over kernel offsets and input channels, in NHWC.
    #[test]
    fn conv2d_matches_direct_convolution(
        n in 1usize..3, height in 1usize..7, width in 1usize..7, channels in 1usize..4,
        out_channels in 1usize..4, kernel in 1usize..4, stride in 1usize..3, padding in 0usize..3,
        seed in any::<u64>(),
    ) {
        let kernel_h = kernel.min(height + 2 * padding);
        let kernel_w = kernel.min(width + 2 * padding);
        let window = Window2d { height, width, channels, kernel_h, kernel_w, stride, padding };
        let b = cpu();
        let mut params = ParamStore::new();
        let conv = Conv2d::new(&b, &mut params, "conv", window, out_channels, &mut ChaCha8Rng::seed_from_u64(seed));
        let bias = data(seed + 1, out_channels, -1.0, 1.0);
        *params.get_mut(conv.bias) = b.upload([1, out_channels], &bias);
        let w = b.download(params.get(conv.weight)).unwrap();
        let x = data(seed + 2, n * window.in_len(), -1.0, 1.0);
        let (y, _) = conv.forward(&b, &params, &b.upload([n, window.in_len()], &x), &mut Ctx::eval());
        let (oh, ow, co) = conv.out_dims();
        let mut want = vec![0.0f64; n * oh * ow * co];
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..co {
                        let mut acc = bias[o] as f64;
                        for ky in 0..kernel_h {
                            for kx in 0..kernel_w {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= height as isize || ix >= width as isize {
                                    continue;
                                }
                                for c in 0..channels {
                                    let xv = x[img * window.in_len() + ((iy as usize * width + ix as usize) * channels + c)];
                                    let wv = w[((ky * kernel_w + kx) * channels + c) * co + o];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        want[img * oh * ow * co + (oy * ow + ox) * co + o] = acc;
                    }
                }
            }
        }
        assert_eq!(b.shape(&y), [n, oh * ow * co]);
        assert_close(&b.download(&y).unwrap(), &want, 1e-5);
    }

    /// MaxPool2d takes the per-channel maximum of each window.
    #[test]
    fn max_pool2d_matches_direct_maximum(
        n in 1usize..3, height in 1usize..7, width in 1usize..7, channels in 1usize..4,
        kernel in 1usize..4, stride in 1usize..3, seed in any::<u64>(),
    ) {
        let kernel = kernel.min(height).min(width);
        let pool = MaxPool2d::new(height, width, channels, kernel, stride);
        let b = cpu();
        let len = pool.window.in_len();
        let x = data(seed, n * len, -1.0, 1.0);
        let (y, _) = pool.forward(&b, &ParamStore::new(), &b.upload([n, len], &x), &mut Ctx::eval());
        let (oh, ow, c) = pool.out_dims();
        let mut want = Vec::new();
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..kernel {
                            for kx in 0..kernel {
                                let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                                m = m.max(x[img * len + (iy * width + ix) * channels + ch]);
                            }
                        }
                        want.push(m as f64);
                    }
                }
            }
        }
        assert_close(&b.download(&y).unwrap(), &want, 0.0);
    }

    /// One GRU step equals PyTorch's formulation, computed in f64 on the host.
    #[test]
    fn gru_step_matches_pytorch_formula(n in 1usize..4, d_in in 1usize..5, h in 1usize..5, seed in any::<u64>()) {
        let b = cpu();
        let mut params = ParamStore::new();
        let cell = GruCell::new(&b, &mut params, "gru", d_in, h, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        *params.get_mut(cell.b_x) = b.upload([1, 3 * h], &data(seed + 1, 3 * h, -1.0, 1.0));
        *params.get_mut(cell.b_h) = b.upload([1, 3 * h], &data(seed + 2, 3 * h, -1.0, 1.0));
        let get = |id| b.download(params.get(id)).unwrap();
        let (wx, bx, wh, bh) = (get(cell.w_x), get(cell.b_x), get(cell.w_h), get(cell.b_h));
        let x = data(seed + 3, n * d_in, -1.0, 1.0);
        let hp = data(seed + 4, n * h, -1.0, 1.0);
        let (y, _) = cell.step(&b, &params, &b.upload([n, d_in], &x), &b.upload([n, h], &hp));
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut want = Vec::new();
        for i in 0..n {
            // Column j of block g (0 = r, 1 = z, 2 = n) of x W_x + b_x and h W_h + b_h.
            let gx = |g: usize, j: usize| {
                let col = g * h + j;
                bx[col] as f64 + (0..d_in).map(|k| x[i * d_in + k] as f64 * wx[k * 3 * h + col] as f64).sum::<f64>()
            };
            let gh = |g: usize, j: usize| {
                let col = g * h + j;
                bh[col] as f64 + (0..h).map(|k| hp[i * h + k] as f64 * wh[k * 3 * h + col] as f64).sum::<f64>()
            };
            for j in 0..h {
                let r = sigmoid(gx(0, j) + gh(0, j));
                let z = sigmoid(gx(1, j) + gh(1, j));
                let cand = (gx(2, j) + r * gh(2, j)).tanh();
                want.push((1.0 - z) * cand + z * hp[i * h + j] as f64);
            }
        }
        assert_close(&b.download(&y).unwrap(), &want, 1e-5);
    }

    /// Truncated BPTT's forward half: two windows with the state carried between them give
    /// exactly the hidden states of one window twice as long.
    #[test]
    fn gru_carried_state_equals_one_long_window(steps in 1usize..5, n in 1usize..3, seed in any::<u64>()) {
        let (d_in, h) = (3, 4);
        let b = cpu();
        let mut params = ParamStore::new();
        let gru = Gru::new(&b, &mut params, "gru", d_in, h, Init::Glorot, &mut ChaCha8Rng::seed_from_u64(seed));
        let xs: Vec<_> = (0..2 * steps)
            .map(|t| b.upload([n, d_in], &data(seed + t as u64, n * d_in, -1.0, 1.0)))
            .collect();
        let h0 = b.upload([n, h], &data(seed + 50, n * h, -1.0, 1.0));
        let (long, _) = gru.forward_seq(&b, &params, &xs, &h0);
        let (first, _) = gru.forward_seq(&b, &params, &xs[..steps], &h0);
        let carried = b.duplicate(first.last().unwrap());
        let (second, _) = gru.forward_seq(&b, &params, &xs[steps..], &carried);
        for (t, (a, w)) in first.iter().chain(&second).zip(&long).enumerate() {
            prop_assert_eq!(b.download(a).unwrap(), b.download(w).unwrap(), "step {}", t);
        }
    }
}

#[test]
fn gru_with_no_steps_returns_the_incoming_gradient() {
    let b = cpu();
    let mut params = ParamStore::new();
    let gru = Gru::new(
        &b,
        &mut params,
        "gru",
        2,
        3,
        Init::Glorot,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    let h0 = b.zeros([2, 3]);
    let (hs, cache) = gru.forward_seq(&b, &params, &[], &h0);
    assert!(hs.is_empty());
    let d = b.upload([2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut grads = modula_nn::Grads::new();
    let (dxs, dh0) = gru.backward_seq(&b, &params, cache, &[], Some(&d), &mut grads);
    assert!(dxs.is_empty());
    assert_eq!(b.download(&dh0).unwrap(), b.download(&d).unwrap());
    assert_eq!(grads.iter().count(), 0);
}

#[test]
#[should_panic(expected = "state gradients")]
fn gru_backward_rejects_a_wrong_number_of_state_gradients() {
    let b = cpu();
    let mut params = ParamStore::new();
    let gru = Gru::new(
        &b,
        &mut params,
        "gru",
        1,
        1,
        Init::Glorot,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    let xs = [b.zeros([1, 1]), b.zeros([1, 1])];
    let (_, cache) = gru.forward_seq(&b, &params, &xs, &b.zeros([1, 1]));
    gru.backward_seq(
        &b,
        &params,
        cache,
        &[b.zeros([1, 1])],
        None,
        &mut modula_nn::Grads::new(),
    );
}

#[test]
fn embedding_looks_up_rows_and_accumulates_repeated_ids() {
    let b = cpu();
    let mut params = ParamStore::new();
    let emb = Embedding::new(
        &b,
        &mut params,
        "emb",
        3,
        2,
        Init::Glorot,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    *params.get_mut(emb.table) = b.upload([3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let y = emb.forward(&b, &params, &[2, 0, 2]);
    assert_eq!(b.download(&y).unwrap(), vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
    let mut grads = modula_nn::Grads::new();
    let dy = b.upload([3, 2], &[1.0, 1.0, 10.0, 10.0, 100.0, 100.0]);
    emb.backward(&b, &[2, 0, 2], &dy, &mut grads);
    let g = b.download(grads.get(emb.table).unwrap()).unwrap();
    assert_eq!(g, vec![10.0, 10.0, 0.0, 0.0, 101.0, 101.0]);
}

#[test]
fn embedding_normal_init_has_the_requested_spread() {
    let b = cpu();
    let mut params = ParamStore::new();
    let emb = Embedding::new(
        &b,
        &mut params,
        "emb",
        100,
        50,
        Init::Normal { std: 0.1 },
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let w = b.download(params.get(emb.table)).unwrap();
    let var = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    assert!((var.sqrt() - 0.1).abs() < 0.005, "std {}", var.sqrt());
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_rejects_out_of_range_ids() {
    let b = cpu();
    let mut params = ParamStore::new();
    let emb = Embedding::new(
        &b,
        &mut params,
        "emb",
        3,
        2,
        Init::Glorot,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    emb.forward(&b, &params, &[3]);
}

#[test]
fn dropout_drops_about_p_and_rescales_the_rest() {
    let b = cpu();
    let params = ParamStore::new();
    let x = b.upload([100, 100], &[1.0; 10_000]);
    let p = 0.3;
    let (y, _) = Dropout::new(p).forward(&b, &params, &x, &mut Ctx::train(5));
    let y = b.download(&y).unwrap();
    let scale = 1.0 / (1.0 - p);
    assert!(y.iter().all(|&v| v == 0.0 || v == scale));
    let dropped = y.iter().filter(|&&v| v == 0.0).count() as f32 / y.len() as f32;
    // Binomial standard deviation is about 0.005 here.
    assert!((dropped - p).abs() < 0.03, "dropped fraction {dropped}");
    let (again, _) = Dropout::new(p).forward(&b, &params, &x, &mut Ctx::train(5));
    assert_eq!(b.download(&again).unwrap(), y, "same seed, same mask");
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let b = cpu();
    let params = ParamStore::new();
    let drop = Dropout::new(0.5);
    let x = b.upload([1, 64], &[1.0; 64]);
    let (y, mask) = drop.forward(&b, &params, &x, &mut Ctx::train(9));
    let dx = drop.backward(&b, &params, mask, &x, &mut modula_nn::Grads::new());
    assert_eq!(b.download(&dx).unwrap(), b.download(&y).unwrap());
}

#[test]
fn dropout_is_the_identity_in_eval_and_at_zero() {
    let b = cpu();
    let params = ParamStore::new();
    let x = b.upload([2, 3], &[1.0, -2.0, 3.0, -4.0, 5.0, -6.0]);
    let (y, _) = Dropout::new(0.9).forward(&b, &params, &x, &mut Ctx::eval());
    assert_eq!(b.download(&y).unwrap(), b.download(&x).unwrap());
    let (y, _) = Dropout::new(0.0).forward(&b, &params, &x, &mut Ctx::train(1));
    assert_eq!(b.download(&y).unwrap(), b.download(&x).unwrap());
}

#[test]
fn dropout_validates_p() {
    for p in [1.0, 1.5, -0.1, f32::NAN] {
        assert!(
            std::panic::catch_unwind(|| Dropout::new(p)).is_err(),
            "p = {p}"
        );
    }
    assert_eq!(Dropout::new(0.25).p(), 0.25);
}

#[test]
fn flatten_is_the_identity_on_nhwc_rows() {
    let b = cpu();
    let x = b.upload([2, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let (y, ()) = Flatten.forward(&b, &ParamStore::new(), &x, &mut Ctx::eval());
    assert_eq!(b.download(&y).unwrap(), b.download(&x).unwrap());
    assert_eq!(b.shape(&Flatten.apply::<Cpu>(y)), [2, 4]);
}

#[test]
#[should_panic(expected = "NHWC images")]
fn conv2d_rejects_a_wrongly_sized_input() {
    let b = cpu();
    let mut params = ParamStore::new();
    let window = Window2d {
        height: 4,
        width: 4,
        channels: 2,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 0,
    };
    let conv = Conv2d::new(
        &b,
        &mut params,
        "conv",
        window,
        2,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    conv.forward(&b, &params, &b.zeros([1, 16]), &mut Ctx::eval());
}

#[test]
fn conv2d_he_init_has_he_variance() {
    let b = cpu();
    let mut params = ParamStore::new();
    let window = Window2d {
        height: 8,
        width: 8,
        channels: 16,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 1,
    };
    let conv = Conv2d::new(
        &b,
        &mut params,
        "conv",
        window,
        32,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let w = b.download(params.get(conv.weight)).unwrap();
    let var = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    let want = 2.0 / (3.0 * 3.0 * 16.0);
    assert!(
        (var / want - 1.0).abs() < 0.1,
        "variance {var}, want {want}"
    );
}
