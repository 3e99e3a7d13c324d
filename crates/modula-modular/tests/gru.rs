//! The modular GRU cell's backpropagation through time against finite differences.

use modula_cpu::Cpu;
use modula_modular::{ModularGruCell, Selection};
use modula_nn::gradcheck::{GradCheck, check, weighted_sum};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn bptt_matches_finite_differences(
        t_steps in 1usize..4, n in 1usize..3, d_in in 1usize..3, hidden in 1usize..3,
        m in 1usize..4, k in 1usize..3, seed in any::<u64>(),
    ) {
        let b = Cpu::with_threads(1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = ParamStore::new();
        let cell = ModularGruCell::new(&b, &mut params, "mgru", d_in, hidden, m, k, &mut rng);
        // Larger weights than the stacked init so that gates are far from linear.
        for layer in [&cell.modules.input, &cell.modules.recurrent] {
            let w = values(&mut rng, m * layer.d_in * layer.d_out);
            *params.get_mut(layer.weight) = b.upload([m * layer.d_in, layer.d_out], &w);
        }
        let sels: Vec<Selection> = (0..t_steps)
            .map(|_| Selection::new(k, (0..n * k).map(|_| rng.random_range(0..m as u32)).collect()))
            .collect();
        let w_h: Vec<Vec<f32>> = (0..t_steps).map(|_| values(&mut rng, n * hidden)).collect();
        let w_p: Vec<Vec<f32>> = (0..t_steps).map(|_| values(&mut rng, n)).collect();
        // Inputs: x_1..x_T, then a carried, non-zero h0.
        let mut inputs: Vec<_> = (0..t_steps).map(|_| b.upload([n, d_in], &values(&mut rng, n * d_in))).collect();
        inputs.push(b.upload([n, hidden], &values(&mut rng, n * hidden)));
        let run = |b: &Cpu, p: &ParamStore<Cpu>, xs: &[<Cpu as Backend>::Tensor]| {
            cell.forward_seq(b, p, &xs[..t_steps], &xs[t_steps], |t, _| Ok::<_, ()>(sels[t].clone())).unwrap()
        };
        check(&b, &mut params, &mut inputs, &GradCheck::default(),
            |b, p, xs| {
                let seq = run(b, p, xs);
                let (hs, lps) = (seq.hs, seq.log_ps);
                (0..t_steps).map(|t| weighted_sum(b, &hs[t], &w_h[t]) + weighted_sum(b, &lps[t], &w_p[t])).sum()
            },
            |b, p, xs| {
                let caches = run(b, p, xs).caches;
                let dhs: Vec<_> = w_h.iter().map(|w| b.upload([n, hidden], w)).collect();
                let dps: Vec<_> = w_p.iter().map(|w| b.upload([n, 1], w)).collect();
                let mut g = Grads::new();
                let (mut dxs, dh0) = cell.backward_seq(b, p, caches, &dhs, &dps, &mut g);
                dxs.push(dh0);
                (g, dxs)
            }).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn selections_are_chosen_ancestrally_from_each_steps_controller() {
    // The chooser sees one controller output per step, in order, each for the batch.
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cell = ModularGruCell::new(&b, &mut params, "mgru", 2, 3, 4, 2, &mut rng);
    let xs: Vec<_> = (0..5)
        .map(|_| b.upload([6, 2], &values(&mut rng, 12)))
        .collect();
    let mut seen = Vec::new();
    let hs = cell
        .forward_seq(&b, &params, &xs, &b.zeros([6, 3]), |t, out| {
            seen.push((t, b.shape(&out.log_probs)));
            out.sample(&b, &mut rng)
        })
        .unwrap()
        .hs;
    assert_eq!(hs.len(), 5);
    assert_eq!(seen, (0..5).map(|t| (t, [12, 4])).collect::<Vec<_>>());
}

/// With `controller_input_grad` off, the controller's loss still trains the controller but
/// sends nothing into `[x; h]`: the input gradients equal those of a zero controller loss.
#[test]
fn controller_input_grad_off_keeps_the_controller_loss_out_of_the_state() {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut cell = ModularGruCell::new(&b, &mut params, "mgru", 2, 3, 4, 1, &mut rng);
    cell.controller_input_grad = false;
    let xs: Vec<_> = (0..3)
        .map(|_| b.upload([5, 2], &values(&mut rng, 10)))
        .collect();
    let h0 = b.upload([5, 3], &values(&mut rng, 15));
    let sels: Vec<Selection> = (0..3)
        .map(|_| Selection::new(1, (0..5).map(|_| rng.random_range(0..4)).collect()))
        .collect();
    let dhs: Vec<_> = (0..3)
        .map(|_| b.upload([5, 3], &values(&mut rng, 15)))
        .collect();
    let run = |d_logp: f32, grads: &mut Grads<Cpu>| {
        let caches = cell
            .forward_seq(&b, &params, &xs, &h0, |t, _| Ok::<_, ()>(sels[t].clone()))
            .unwrap()
            .caches;
        let dps: Vec<_> = (0..3).map(|_| b.upload([5, 1], &[d_logp; 5])).collect();
        let (dxs, dh0) = cell.backward_seq(&b, &params, caches, &dhs, &dps, grads);
        let mut all: Vec<f32> = dxs.iter().flat_map(|d| b.download(d).unwrap()).collect();
        all.extend(b.download(&dh0).unwrap());
        all
    };
    let (mut with_loss, mut without) = (Grads::new(), Grads::new());
    assert_eq!(run(-0.7, &mut with_loss), run(0.0, &mut without));
    // The controller itself is still trained by its loss.
    let w = cell.controller.linear.weight;
    let g = b.download(with_loss.get(w).unwrap()).unwrap();
    assert!(g.iter().any(|&v| v != 0.0));
}
