//! EWC's penalty against its definition, its gradient against finite differences, and the
//! growable assignment table.

use modula_em::AssignmentTable;
use modula_em::Penalty;
use modula_em::ewc::Ewc;
use modula_nn::{Grads, ParamStore};
use modula_tensor::{Backend, Reference};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHAPES: [[usize; 2]; 2] = [[3, 4], [1, 5]];

fn random(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// One host vector per parameter.
type Host = Vec<Vec<f32>>;

/// `lambda / 2 * sum_t sum_i F_t,i (theta_i - anchor_t,i)^2`, term by term, over the tasks'
/// (Fisher, anchor) pairs.
fn definition(lambda: f64, tasks: &[(Host, Host)], theta: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0;
    for (fisher, anchor) in tasks {
        for ((f, a), t) in fisher.iter().zip(anchor).zip(theta) {
            for ((&f, &a), &t) in f.iter().zip(a).zip(t) {
                sum += f as f64 * (t as f64 - a as f64).powi(2);
            }
        }
    }
    0.5 * lambda * sum
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn the_penalty_and_its_gradient(seed in 0u64..10_000, tasks in 1usize..4, lambda in 0.1f64..50.0) {
        let b = Reference;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamStore::new();
        let ids: Vec<_> = SHAPES
            .iter()
            .enumerate()
            .map(|(i, &s)| params.add(format!("p{i}"), b.zeros(s)))
            .collect();
        let mut ewc = Ewc::new(lambda);
        let mut kept = Vec::new();
        for _ in 0..tasks {
            let anchor: Vec<Vec<f32>> = SHAPES.iter().map(|s| random(&mut rng, s[0] * s[1], -1.0, 1.0)).collect();
            let fisher: Vec<Vec<f32>> = SHAPES.iter().map(|s| random(&mut rng, s[0] * s[1], 0.0, 2.0)).collect();
            for ((&id, a), s) in ids.iter().zip(&anchor).zip(SHAPES) {
                *params.get_mut(id) = b.upload(s, a);
            }
            ewc.consolidate(&b, &params, &fisher).unwrap();
            kept.push((fisher, anchor));
        }
        let theta: Vec<Vec<f32>> = SHAPES.iter().map(|s| random(&mut rng, s[0] * s[1], -2.0, 2.0)).collect();
        let value = ewc.value(&theta);
        let expected = definition(lambda, &kept, &theta);
        prop_assert!((value - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{value} vs {expected}");

        // Central differences: the penalty is quadratic, so they are exact up to rounding.
        let grad = ewc.gradient(&theta);
        let h = 1e-2f32;
        for (p, g) in grad.iter().enumerate() {
            for i in 0..g.len() {
                let mut plus = theta.clone();
                plus[p][i] += h;
                let mut minus = theta.clone();
                minus[p][i] -= h;
                let step = (plus[p][i] - minus[p][i]) as f64;
                let fd = (definition(lambda, &kept, &plus) - definition(lambda, &kept, &minus)) / step;
                prop_assert!((g[i] as f64 - fd).abs() <= 1e-3 * fd.abs().max(1.0), "param {p}[{i}]: {} vs {fd}", g[i]);
            }
        }

        // Through the trainer's hook: the gradient is added to what the step computed.
        for ((&id, t), s) in ids.iter().zip(&theta).zip(SHAPES) {
            *params.get_mut(id) = b.upload(s, t);
        }
        let mut grads = Grads::new();
        grads.accumulate(&b, ids[0], &b.upload(SHAPES[0], &[1.0; 12]));
        let reported = ewc.add_gradient(&b, &params, &mut grads).unwrap();
        prop_assert!((reported - value).abs() <= 1e-9 * value.abs().max(1.0));
        let g0 = b.download(grads.get(ids[0]).unwrap()).unwrap();
        for (got, want) in g0.iter().zip(&grad[0]) {
            prop_assert!((got - (want + 1.0)).abs() <= 1e-5 * want.abs().max(1.0));
        }
        prop_assert_eq!(b.download(grads.get(ids[1]).unwrap()).unwrap(), grad[1].clone());
    }
}

#[test]
fn no_consolidated_task_is_no_penalty() {
    let b = Reference;
    let mut params = ParamStore::new();
    let id = params.add("p", b.upload([1, 2], &[1.0, 2.0]));
    let ewc = Ewc::new(10.0);
    assert!(ewc.is_empty());
    let mut grads = Grads::new();
    assert_eq!(ewc.add_gradient(&b, &params, &mut grads).unwrap(), 0.0);
    assert!(grads.get(id).is_none());
}

#[test]
fn a_grown_table_keeps_its_rows_and_draws_like_a_fresh_one() {
    let shapes = [(4, 2), (3, 1)];
    let fresh = AssignmentTable::random(10, &shapes, &mut ChaCha8Rng::seed_from_u64(1));
    let mut grown = AssignmentTable::empty(&shapes);
    assert_eq!(grown.examples(), 0);
    grown.grow(10, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(grown, fresh);
    grown.grow(5, &mut ChaCha8Rng::seed_from_u64(2));
    assert_eq!(grown.examples(), 15);
    for (l, layer) in grown.layers().iter().enumerate() {
        let k = layer.k();
        assert_eq!(layer.as_slice().len(), 15 * k);
        assert_eq!(&layer.as_slice()[..10 * k], fresh.layers()[l].as_slice());
        assert!(
            layer
                .as_slice()
                .iter()
                .all(|&m| (m as usize) < layer.modules())
        );
    }
}
