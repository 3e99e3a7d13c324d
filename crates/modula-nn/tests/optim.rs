//! Optimisers and gradient clipping behave as their formulas say.

use modula_cpu::Cpu;
use modula_nn::{Adam, Grads, Optimizer, ParamStore, Sgd};
use modula_tensor::Backend;

#[test]
fn sgd_minimises_a_quadratic() {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::<Cpu>::new();
    let id = params.add("w", b.upload([1, 2], &[3.0, -2.0]));
    let mut opt = Sgd::new(0.1, 0.9);
    for _ in 0..200 {
        // L = 0.5 * |w|^2, so dL/dw = w.
        let mut g = Grads::new();
        g.accumulate(&b, id, params.get(id));
        opt.step(&b, &mut params, &g);
    }
    let w = b.download(params.get(id)).unwrap();
    assert!(w.iter().all(|v| v.abs() < 1e-3), "{w:?}");
}

#[test]
fn adam_first_step_moves_by_learning_rate() {
    // With bias correction, Adam's first step is lr * sign(g) (up to eps).
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::<Cpu>::new();
    let id = params.add("w", b.upload([1, 3], &[0.0, 0.0, 0.0]));
    let mut g = Grads::new();
    g.accumulate(&b, id, &b.upload([1, 3], &[5.0, -0.01, 2.0]));
    Adam::new(0.1).step(&b, &mut params, &g);
    let w = b.download(params.get(id)).unwrap();
    for (got, want) in w.iter().zip([-0.1, 0.1, -0.1]) {
        assert!((got - want).abs() < 1e-5, "{w:?}");
    }
}

#[test]
fn clip_norm_rescales_to_the_limit() {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::<Cpu>::new();
    let a = params.add("a", b.zeros([1, 2]));
    let c = params.add("c", b.zeros([1, 1]));
    let mut g = Grads::new();
    g.accumulate(&b, a, &b.upload([1, 2], &[3.0, 0.0]));
    g.accumulate(&b, c, &b.upload([1, 1], &[4.0]));
    let before = g.clip_norm(&b, 1.0).unwrap();
    assert!((before - 5.0).abs() < 1e-6);
    assert!((g.global_norm(&b).unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(b.download(g.get(a).unwrap()).unwrap(), vec![0.6, 0.0]);
}

#[test]
#[should_panic(expected = "already registered")]
fn duplicate_parameter_names_panic() {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::<Cpu>::new();
    params.add("w", b.zeros([1, 1]));
    params.add("w", b.zeros([1, 1]));
}

#[test]
fn reset_keeps_buffers_but_forgets_gradients() {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::<Cpu>::new();
    let a = params.add("a", b.zeros([1, 2]));
    let mut g = Grads::new();
    g.accumulate(&b, a, &b.upload([1, 2], &[1.0, 2.0]));
    let (_, beta) = g.product_entry(&b, a, [1, 2]);
    assert_eq!(beta, 1.0, "a live gradient is accumulated into");
    g.reset();
    assert!(g.get(a).is_none() && g.iter().count() == 0);
    // A product overwrites the stale buffer (beta = 0) ...
    let (_, beta) = g.product_entry(&b, a, [1, 2]);
    assert_eq!(beta, 0.0);
    g.reset();
    // ... and an accumulating pass sees zeros, not the stale values.
    g.accumulate(&b, a, &b.upload([1, 2], &[0.5, 0.5]));
    assert_eq!(b.download(g.get(a).unwrap()).unwrap(), vec![0.5, 0.5]);
}
