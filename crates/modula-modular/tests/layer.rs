//! The grouped modular layer against the per-row reference, and its gradients against
//! finite differences.

use modula_cpu::Cpu;
use modula_modular::{ModularLinear, NaiveLayer, Routing, Selection};
use modula_nn::gradcheck::{GradCheck, check, check_module, weighted_sum};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// A random layer problem: weights with non-zero biases, input, selection (duplicates
/// allowed), gates.
struct Case {
    b: Cpu,
    params: ParamStore<Cpu>,
    layer: ModularLinear,
    x: Vec<f32>,
    sel: Selection,
    gates: Vec<f32>,
    n: usize,
}

fn case(
    n: usize,
    d_in: usize,
    d_out: usize,
    m: usize,
    k: usize,
    threads: usize,
    seed: u64,
) -> Case {
    let b = Cpu::with_threads(threads);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = ParamStore::new();
    let layer = ModularLinear::new(&b, &mut params, "mod", m, d_in, d_out, &mut rng);
    let bias = values(&mut rng, m * d_out);
    *params.get_mut(layer.bias) = b.upload([m, d_out], &bias);
    let x = values(&mut rng, n * d_in);
    // Bias the draws towards low module indices so that some modules get no rows and some
    // rows repeat a module across slots.
    let sel = Selection::new(
        k,
        (0..n * k)
            .map(|_| {
                rng.random_range(0..m as u32)
                    .min(rng.random_range(0..m as u32))
            })
            .collect(),
    );
    let gates = values(&mut rng, n * k);
    Case {
        b,
        params,
        layer,
        x,
        sel,
        gates,
        n,
    }
}

fn close(what: &str, got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{} element {}: grouped {} vs reference {}",
            what,
            i,
            g,
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn grouped_matches_per_row_reference(
        n in 1usize..24, d_in in 1usize..9, d_out in 1usize..9, m in 1usize..7, k_raw in 1usize..8,
        gated in any::<bool>(), threads in 1usize..3, seed in any::<u64>(),
    ) {
        // K ranges over 1..=M+1, so K = M and K > M (forced duplicates) both occur.
        let k = 1 + k_raw % (m + 1);
        let c = case(n, d_in, d_out, m, k, threads, seed);
        let b = &c.b;
        let routing = Routing::new(&c.sel, m);
        let x = b.upload([c.n, d_in], &c.x);
        let g = b.upload([c.n, k], &c.gates);
        let gates = gated.then_some(&g);
        let (y, cache) = c.layer.forward(b, &c.params, &x, &routing, gates);
        let w = b.download(c.params.get(c.layer.weight)).unwrap();
        let bias = b.download(c.params.get(c.layer.bias)).unwrap();
        let naive = NaiveLayer { modules: m, d_in, d_out, weight: &w, bias: &bias };
        let host_gates = gated.then_some(c.gates.as_slice());
        close("forward", &b.download(&y).unwrap(), &naive.forward(&c.x, &c.sel, host_gates))?;

        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
        let dy_host = values(&mut rng, c.n * d_out);
        let dy = b.upload([c.n, d_out], &dy_host);
        let mut grads = Grads::new();
        let (dx, dg) = c.layer.backward(b, &c.params, &routing, cache, &dy, &mut grads);
        let want = naive.backward(&c.x, &c.sel, host_gates, &dy_host);
        close("dx", &b.download(&dx).unwrap(), &want.dx)?;
        close("dW", &b.download(grads.get(c.layer.weight).unwrap()).unwrap(), &want.dw)?;
        close("db", &b.download(grads.get(c.layer.bias).unwrap()).unwrap(), &want.db)?;
        match dg {
            Some(dg) => close("dgates", &b.download(&dg).unwrap(), &want.dgates)?,
            None => prop_assert!(!gated, "gated forward must return gate gradients"),
        }
    }

    /// The split backward (input gradient now, weight gradient later over the same rows)
    /// equals the per-row reference, like the fused one.
    #[test]
    fn split_backward_matches_per_row_reference(
        n in 1usize..24, d_in in 1usize..9, d_out in 1usize..9, m in 1usize..7, k in 1usize..4,
        threads in 1usize..3, seed in any::<u64>(),
    ) {
        let c = case(n, d_in, d_out, m, k, threads, seed);
        let b = &c.b;
        let routing = Routing::new(&c.sel, m);
        let x = b.upload([c.n, d_in], &c.x);
        let (_, cache) = c.layer.forward(b, &c.params, &x, &routing, None);
        let w = b.download(c.params.get(c.layer.weight)).unwrap();
        let bias = b.download(c.params.get(c.layer.bias)).unwrap();
        let naive = NaiveLayer { modules: m, d_in, d_out, weight: &w, bias: &bias };
        let dy_host = values(&mut ChaCha8Rng::seed_from_u64(seed ^ 1), c.n * d_out);
        let dy = b.upload([c.n, d_out], &dy_host);
        let dx = c.layer.input_grad(b, &c.params, &routing, cache, &dy);
        let mut grads = Grads::new();
        c.layer.weight_grads(b, &routing, &x, &dy, &mut grads);
        let want = naive.backward(&c.x, &c.sel, None, &dy_host);
        close("dx", &b.download(&dx).unwrap(), &want.dx)?;
        close("dW", &b.download(grads.get(c.layer.weight).unwrap()).unwrap(), &want.dw)?;
        close("db", &b.download(grads.get(c.layer.bias).unwrap()).unwrap(), &want.db)?;
    }

    #[test]
    fn finite_differences_inputs_and_module_params(
        n in 1usize..5, d_in in 1usize..4, d_out in 1usize..4, m in 1usize..4, k in 1usize..3, seed in any::<u64>(),
    ) {
        let mut c = case(n, d_in, d_out, m, k, 1, seed);
        let routing = Routing::new(&c.sel, m);
        let x = c.b.upload([c.n, d_in], &c.x);
        check_module(&c.b, &c.layer.routed(&routing), &mut c.params, x, seed, &GradCheck::default())
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn finite_differences_gates(
        n in 1usize..5, d_in in 1usize..4, d_out in 1usize..4, m in 1usize..4, k in 1usize..4, seed in any::<u64>(),
    ) {
        let mut c = case(n, d_in, d_out, m, k, 1, seed);
        let routing = Routing::new(&c.sel, m);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 2);
        let w = values(&mut rng, c.n * d_out);
        let dy = c.b.upload([c.n, d_out], &w);
        let mut inputs = [c.b.upload([c.n, d_in], &c.x), c.b.upload([c.n, k], &c.gates)];
        let layer = c.layer.clone();
        check(&c.b, &mut c.params, &mut inputs, &GradCheck::default(),
            |b, p, xs| weighted_sum(b, &layer.forward(b, p, &xs[0], &routing, Some(&xs[1])).0, &w),
            |b, p, xs| {
                let (_, cache) = layer.forward(b, p, &xs[0], &routing, Some(&xs[1]));
                let mut g = Grads::new();
                let (dx, dg) = layer.backward(b, p, &routing, cache, &dy, &mut g);
                (g, vec![dx, dg.expect("gated")])
            }).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn routing_sorts_distinct_pairs_by_module() {
    // Row 0 picks module 2 twice: it must be computed once.
    let sel = Selection::new(2, vec![2, 2, 0, 2, 1, 0]);
    let r = Routing::new(&sel, 4);
    assert_eq!(r.offsets, vec![0, 2, 3, 5, 5]);
    assert_eq!(r.pair_rows, vec![1, 2, 2, 0, 1]);
    assert_eq!(r.pair_modules, vec![0, 0, 1, 2, 2]);
    assert_eq!(r.pairs(), 5);
    assert_eq!(r.count(3), 0);
    // Each row's pairs, in slot order.
    let row1: Vec<u32> = r.row_pos[r.row_ptr[1] as usize..r.row_ptr[2] as usize]
        .iter()
        .map(|&p| r.pair_modules[p as usize])
        .collect();
    assert_eq!(row1, vec![0, 2]);
}

#[test]
#[should_panic(expected = "names module 4")]
fn routing_rejects_out_of_range_modules() {
    Routing::new(&Selection::new(1, vec![0, 4]), 4);
}
