//! Modular convolution against a per-image oracle and finite differences; the generic module
//! pool against the grouped linear layer.

use modula_cpu::Cpu;
use modula_modular::{ModularConv2d, ModularLinear, ModulePool, Routing, Selection};
use modula_nn::gradcheck::{GradCheck, check, weighted_sum};
use modula_nn::{Ctx, Grads, Init, Linear, ParamStore};
use modula_tensor::{Backend, Reference, Transpose, Window2d};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn random_selection(rng: &mut ChaCha8Rng, n: usize, k: usize, m: usize) -> Selection {
    Selection::new(
        k,
        (0..n * k).map(|_| rng.random_range(0..m as u32)).collect(),
    )
}

/// Convolution of one image with one module's weights, by the reference backend.
fn conv_one(x: &[f32], w: &[f32], bias: &[f32], window: &Window2d, c_out: usize) -> Vec<f32> {
    let r = Reference;
    let cols = r.im2col(&r.upload([1, window.in_len()], x), window);
    let mut y = r.zeros([cols.rows(), c_out]);
    r.matmul(
        1.0,
        &cols,
        Transpose::No,
        &r.upload([window.patch_len(), c_out], w),
        Transpose::No,
        0.0,
        &mut y,
    );
    r.add_row(&mut y, &r.upload([1, c_out], bias));
    r.download(&y).unwrap()
}

fn window_strategy() -> impl Strategy<Value = Window2d> {
    (
        2usize..6,
        2usize..6,
        1usize..3,
        1usize..4,
        1usize..3,
        0usize..2,
    )
        .prop_map(|(h, w, c, k, stride, padding)| Window2d {
            height: h,
            width: w,
            channels: c,
            kernel_h: k.min(h + 2 * padding),
            kernel_w: k.min(w + 2 * padding),
            stride,
            padding,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn modular_conv_matches_per_image_oracle_and_finite_differences(
        window in window_strategy(), n in 1usize..4, m in 1usize..4, k in 1usize..3, c_out in 1usize..3, gated in any::<bool>(), seed in any::<u64>(),
    ) {
        let b = Cpu::with_threads(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamStore::new();
        let layer = ModularConv2d::new(&b, &mut params, "conv", m, window, c_out, &mut rng);
        *params.get_mut(layer.bias) = b.upload([m, c_out], &values(&mut rng, m * c_out));
        let sel = random_selection(&mut rng, n, k, m);
        let routing = Routing::new(&sel, m);
        let x = values(&mut rng, n * window.in_len());
        // Gated: each selected module's output is scaled by the gate of its first slot.
        let gate_values = values(&mut rng, n * k);
        let gates = gated.then(|| b.upload([n, k], &gate_values));
        let (y, _) = layer.forward(&b, &params, &b.upload([n, window.in_len()], &x), &routing, gates.as_ref());
        let y = b.download(&y).unwrap();

        let w = b.download(params.get(layer.weight)).unwrap();
        let bias = b.download(params.get(layer.bias)).unwrap();
        let (patch, out_len) = (window.patch_len(), layer.out_pixels() * c_out);
        for i in 0..n {
            let mut want = vec![0.0f32; out_len];
            let row = sel.row(i);
            for s in 0..k {
                if row[..s].contains(&row[s]) {
                    continue;
                }
                let mm = row[s] as usize;
                let one = conv_one(&x[i * window.in_len()..(i + 1) * window.in_len()], &w[mm * patch * c_out..(mm + 1) * patch * c_out], &bias[mm * c_out..(mm + 1) * c_out], &window, c_out);
                let gate = if gated { gate_values[i * k + s] } else { 1.0 };
                want.iter_mut().zip(one).for_each(|(a, v)| *a += gate * v);
            }
            for (j, (g, e)) in y[i * out_len..(i + 1) * out_len].iter().zip(&want).enumerate() {
                prop_assert!((g - e).abs() < 1e-4, "image {} element {}: {} vs {}", i, j, g, e);
            }
        }

        let wts = values(&mut rng, n * out_len);
        let dy = b.upload([n, out_len], &wts);
        let mut inputs = vec![b.upload([n, window.in_len()], &x)];
        if gated {
            inputs.push(b.upload([n, k], &gate_values));
        }
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| weighted_sum(b, &layer.forward(b, p, &xs[0], &routing, xs.get(1)).0, &wts),
            |b, p, xs| {
                let (_, cache) = layer.forward(b, p, &xs[0], &routing, xs.get(1));
                let mut g = Grads::new();
                let (dx, dg) = layer.backward(b, p, &routing, cache, &dy, &mut g);
                assert_eq!(dg.is_some(), gated, "a gate gradient exactly when gated");
                (g, std::iter::once(dx).chain(dg).collect())
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn module_pool_of_linears_equals_grouped_layer(
        n in 1usize..20, d_in in 1usize..6, d_out in 1usize..6, m in 1usize..5, k in 1usize..4, seed in any::<u64>(),
    ) {
        let b = Cpu::with_threads(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pool_params = ParamStore::new();
        let pool = ModulePool {
            modules: (0..m).map(|i| Linear::new(&b, &mut pool_params, &format!("m{i}"), d_in, d_out, Init::Glorot, &mut rng)).collect(),
        };
        // The same weights, stacked, in a grouped layer.
        let mut params = ParamStore::new();
        let layer = ModularLinear::new(&b, &mut params, "mod", m, d_in, d_out, &mut rng);
        let stacked: Vec<f32> = pool.modules.iter().flat_map(|l| b.download(pool_params.get(l.weight)).unwrap()).collect();
        *params.get_mut(layer.weight) = b.upload([m * d_in, d_out], &stacked);

        let sel = random_selection(&mut rng, n, k, m);
        let routing = Routing::new(&sel, m);
        let x = b.upload([n, d_in], &values(&mut rng, n * d_in));
        let (y_pool, pc) = pool.forward(&b, &pool_params, &x, &routing, &mut Ctx::eval());
        let (y_grp, gc) = layer.forward(&b, &params, &x, &routing, None);
        let (yp, yg) = (b.download(&y_pool).unwrap(), b.download(&y_grp).unwrap());
        for (p, g) in yp.iter().zip(&yg) {
            prop_assert!((p - g).abs() < 1e-5, "{} vs {}", p, g);
        }
        let dy = b.upload([n, d_out], &values(&mut rng, n * d_out));
        let (mut g_pool, mut g_grp) = (Grads::new(), Grads::new());
        let dx_pool = b.download(&pool.backward(&b, &pool_params, &routing, pc, &dy, &mut g_pool)).unwrap();
        let dx_grp = b.download(&layer.backward(&b, &params, &routing, gc, &dy, &mut g_grp).0).unwrap();
        for (p, g) in dx_pool.iter().zip(&dx_grp) {
            prop_assert!((p - g).abs() < 1e-5, "dx {} vs {}", p, g);
        }
        let dw_grp = b.download(g_grp.get(layer.weight).unwrap()).unwrap();
        for (i, l) in pool.modules.iter().enumerate() {
            let want = &dw_grp[i * d_in * d_out..(i + 1) * d_in * d_out];
            match g_pool.get(l.weight) {
                Some(g) => for (p, w) in b.download(g).unwrap().iter().zip(want) {
                    prop_assert!((p - w).abs() < 1e-5, "dW module {}: {} vs {}", i, p, w);
                },
                None => prop_assert!(want.iter().all(|&v| v == 0.0), "module {} got no rows but the grouped layer has a gradient", i),
            }
        }
    }
}
