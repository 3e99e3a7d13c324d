//! The neuron-group layer against a per-row reference and finite differences, and the
//! distinct controller (K modules without repetition) against the Plackett-Luce formula.

use modula_cpu::Cpu;
use modula_modular::{Controller, GroupedRelu, Routing, Selection};
use modula_nn::gradcheck::{GradCheck, check, weighted_sum};
use modula_nn::{Grads, ParamStore};
use modula_tensor::{Backend, Reference};
use proptest::prelude::*;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// `k` distinct groups per row, or with `repeat` the first slot repeated into the last (a
/// randomly initialised EM table can hold one).
fn selection(rng: &mut ChaCha8Rng, n: usize, m: usize, k: usize, repeat: bool) -> Selection {
    let picks = (0..n)
        .flat_map(|_| {
            let mut row: Vec<u32> = index::sample(rng, m, k)
                .into_iter()
                .map(|v| v as u32)
                .collect();
            if repeat && k > 1 {
                row[k - 1] = row[0];
            }
            row
        })
        .collect();
    Selection::new(k, picks)
}

/// The slow reference: per row, per distinct selected group (its first slot's gate), every
/// neuron `gate * relu(b + sum_j x_j W_jc)`; zero elsewhere.
fn reference(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    sel: &Selection,
    gates: Option<&[f32]>,
    (m, d_in, width): (usize, usize, usize),
) -> Vec<f32> {
    let n = sel.rows();
    let mut y = vec![0.0f32; n * m * width];
    for i in 0..n {
        let row = sel.row(i);
        for (s, &g) in row.iter().enumerate() {
            if row[..s].contains(&g) {
                continue;
            }
            let g = g as usize;
            let scale = gates.map_or(1.0, |gs| gs[i * sel.k() + s]);
            for c in 0..width {
                let mut z = bias[g * width + c];
                for j in 0..d_in {
                    z += x[i * d_in + j] * w[(g * d_in + j) * width + c];
                }
                y[i * m * width + g * width + c] = scale * z.max(0.0);
            }
        }
    }
    y
}

/// Every computed pre-activation `b + x W` of the selected groups, for the kink check.
fn reference_pre(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    sel: &Selection,
    (d_in, width): (usize, usize),
) -> Vec<f32> {
    let mut out = Vec::new();
    for i in 0..sel.rows() {
        for &g in sel.row(i) {
            let g = g as usize;
            for c in 0..width {
                out.push(
                    bias[g * width + c]
                        + (0..d_in)
                            .map(|j| x[i * d_in + j] * w[(g * d_in + j) * width + c])
                            .sum::<f32>(),
                );
            }
        }
    }
    out
}

struct Case<B: Backend> {
    b: B,
    params: ParamStore<B>,
    layer: GroupedRelu,
    x: Vec<f32>,
    sel: Selection,
    gates: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn case<B: Backend>(
    b: B,
    n: usize,
    d_in: usize,
    (m, width): (usize, usize),
    k: usize,
    repeat: bool,
    seed: u64,
) -> Case<B> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = ParamStore::new();
    let layer = GroupedRelu::new(&b, &mut params, "g", (m, width), d_in, &mut rng);
    *params.get_mut(layer.bias) = b.upload([m, width], &values(&mut rng, m * width));
    let x = values(&mut rng, n * d_in);
    let sel = selection(&mut rng, n, m, k, repeat);
    let gates = values(&mut rng, n * k);
    Case {
        b,
        params,
        layer,
        x,
        sel,
        gates,
    }
}

fn close(got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "element {}: layer {} vs reference {}",
            i,
            g,
            w
        );
    }
    Ok(())
}

fn forward_matches<B: Backend>(c: &Case<B>, gated: bool) -> Result<(), TestCaseError> {
    let (b, l) = (&c.b, &c.layer);
    let n = c.sel.rows();
    let routing = Routing::new(&c.sel, l.modules);
    let gates = gated.then(|| b.upload([n, c.sel.k()], &c.gates));
    let x = b.upload([n, l.d_in], &c.x);
    let (y, _) = l.forward(b, &c.params, &x, &routing, gates.as_ref());
    let want = reference(
        &c.x,
        &b.download(c.params.get(l.weight)).unwrap(),
        &b.download(c.params.get(l.bias)).unwrap(),
        &c.sel,
        gated.then_some(c.gates.as_slice()),
        (l.modules, l.d_in, l.width),
    );
    close(&b.download(&y).unwrap(), &want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn forward_matches_the_reference_on_both_backends(
        n in 1usize..7, d_in in 1usize..6, m in 1usize..6, width in 1usize..4,
        k_pick in 0usize..6, repeat in any::<bool>(), gated in any::<bool>(),
        threads in 1usize..3, seed in any::<u64>(),
    ) {
        let k = 1 + k_pick % m;
        forward_matches(&case(Cpu::with_threads(threads), n, d_in, (m, width), k, repeat, seed), gated)?;
        forward_matches(&case(Reference, n, d_in, (m, width), k, repeat, seed), gated)?;
    }

    #[test]
    fn backward_matches_finite_differences(
        n in 1usize..4, d_in in 1usize..4, m in 1usize..4, width in 1usize..3,
        k_pick in 0usize..4, repeat in any::<bool>(), gated in any::<bool>(), seed in any::<u64>(),
    ) {
        let k = 1 + k_pick % m;
        let mut c = case(Cpu::with_threads(1), n, d_in, (m, width), k, repeat, seed);
        let routing = Routing::new(&c.sel, m);
        // Finite differences are only valid away from the ReLU's kink: no pre-activation may
        // lie within reach of a step (eps times the largest input or weight, well below 0.02).
        let (b, l) = (&c.b, &c.layer);
        let pre = reference_pre(
            &c.x,
            &b.download(c.params.get(l.weight)).unwrap(),
            &b.download(c.params.get(l.bias)).unwrap(),
            &c.sel,
            (d_in, width),
        );
        prop_assume!(pre.iter().all(|z| z.abs() > 0.02));
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 7);
        let w = values(&mut rng, n * m * width);
        let dy = c.b.upload([n, m * width], &w);
        let layer = c.layer.clone();
        let mut inputs = vec![c.b.upload([n, d_in], &c.x)];
        if gated {
            inputs.push(c.b.upload([n, k], &c.gates));
        }
        // A step small enough that no pre-activation crosses zero (the ReLU's kink).
        let cfg = GradCheck { eps: 1e-3, abs: 5e-3, rel: 2e-2 };
        check(&c.b, &mut c.params, &mut inputs, &cfg,
            |b, p, xs| {
                let (y, _) = layer.forward(b, p, &xs[0], &routing, xs.get(1));
                weighted_sum(b, &y, &w)
            },
            |b, p, xs| {
                let (_, cache) = layer.forward(b, p, &xs[0], &routing, xs.get(1));
                let mut g = Grads::new();
                let (dx, dg) = layer.backward(b, p, &routing, cache, &dy, &mut g);
                (g, std::iter::once(dx).chain(dg).collect())
            }).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn every_group_selected_is_the_dense_relu_layer(
        n in 1usize..6, d_in in 1usize..6, m in 1usize..6, width in 1usize..4, seed in any::<u64>(),
    ) {
        let c = case(Cpu::with_threads(1), n, d_in, (m, width), m, false, seed);
        let (b, l) = (&c.b, &c.layer);
        let w = b.download(c.params.get(l.weight)).unwrap();
        let bias = b.download(c.params.get(l.bias)).unwrap();
        // Neuron g * width + c of the dense layer is column c of group g.
        let mut want = vec![0.0f32; n * m * width];
        for i in 0..n {
            for g in 0..m {
                for cc in 0..width {
                    let z: f32 = bias[g * width + cc]
                        + (0..d_in).map(|j| c.x[i * d_in + j] * w[(g * d_in + j) * width + cc]).sum::<f32>();
                    want[i * m * width + g * width + cc] = z.max(0.0);
                }
            }
        }
        let routing = Routing::new(&c.sel, m);
        let (y, _) = l.forward(b, &c.params, &b.upload([n, d_in], &c.x), &routing, None);
        close(&b.download(&y).unwrap(), &want)?;
    }
}

fn distinct_controller(
    d_in: usize,
    m: usize,
    k: usize,
    seed: u64,
) -> (Cpu, ParamStore<Cpu>, Controller) {
    let b = Cpu::with_threads(1);
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = Controller::distinct(&b, &mut params, "ctrl", d_in, m, k, &mut rng);
    let bias: Vec<f32> = (0..m).map(|_| rng.random_range(-1.5..1.5)).collect();
    *params.get_mut(c.linear.bias) = b.upload([1, m], &bias);
    (b, params, c)
}

/// The Plackett-Luce log-probability of `picks` (repeats counted once) from scores `s`.
fn plackett_luce(s: &[f32], picks: &[u32]) -> f64 {
    let mut drawn: Vec<u32> = Vec::new();
    let mut total = 0.0;
    for &a in picks {
        if drawn.contains(&a) {
            continue;
        }
        let mass: f64 = (0..s.len() as u32)
            .filter(|m| !drawn.contains(m))
            .map(|m| (s[m as usize] as f64).exp())
            .sum();
        total += s[a as usize] as f64 - mass.ln();
        drawn.push(a);
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn distinct_log_prob_is_plackett_luce_and_its_backward_matches_finite_differences(
        n in 1usize..4, d_in in 1usize..4, m in 1usize..6, k_pick in 0usize..6,
        repeat in any::<bool>(), seed in any::<u64>(),
    ) {
        let k = 1 + k_pick % m;
        let (b, mut params, ctrl) = distinct_controller(d_in, m, k, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 3);
        let sel = selection(&mut rng, n, m, k, repeat);
        let x: Vec<f32> = values(&mut rng, n * d_in);
        let xt = b.upload([n, d_in], &x);
        let out = ctrl.forward(&b, &params, &xt);
        let scores = b.download(&out.log_probs).unwrap();
        let lp = b.download(&ctrl.log_prob(&b, &out, &sel)).unwrap();
        for i in 0..n {
            let want = plackett_luce(&scores[i * m..(i + 1) * m], sel.row(i));
            prop_assert!((lp[i] as f64 - want).abs() < 1e-4, "row {}: {} vs {}", i, lp[i], want);
        }
        let weights = values(&mut rng, n);
        let d = b.upload([n, 1], &weights);
        let mut inputs = [xt];
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
    fn distinct_greedy_is_the_top_k_and_samples_never_repeat(
        n in 1usize..6, d_in in 1usize..4, m in 1usize..7, k_pick in 0usize..7, seed in any::<u64>(),
    ) {
        let k = 1 + k_pick % m;
        let (b, params, ctrl) = distinct_controller(d_in, m, k, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 4);
        let x = values(&mut rng, n * d_in);
        let out = ctrl.forward(&b, &params, &b.upload([n, d_in], &x));
        let lp = b.download(&out.log_probs).unwrap();
        let greedy = out.greedy(&b).unwrap();
        let sample = out.sample(&b, &mut rng).unwrap();
        for i in 0..n {
            let row = &lp[i * m..(i + 1) * m];
            let picks = greedy.row(i);
            for w in picks.windows(2) {
                prop_assert!(row[w[0] as usize] >= row[w[1] as usize], "greedy not in decreasing order");
            }
            let worst = row[picks[k - 1] as usize];
            for mm in 0..m as u32 {
                if !picks.contains(&mm) {
                    prop_assert!(row[mm as usize] <= worst, "module {} beats the greedy pick", mm);
                }
            }
            let mut s = sample.row(i).to_vec();
            s.sort_unstable();
            s.dedup();
            prop_assert_eq!(s.len(), k, "a sample repeats a module");
        }
    }
}

/// The empirical frequency of every ordered pair drawn by a distinct controller with M = 3,
/// K = 2 agrees with its Plackett-Luce probability.
#[test]
fn distinct_samples_follow_plackett_luce() {
    let (b, params, ctrl) = distinct_controller(2, 3, 2, 11);
    let x = b.upload([1, 2], &[0.3, -0.7]);
    let out = ctrl.forward(&b, &params, &x);
    let lp = b.download(&out.log_probs).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let draws = 20_000;
    let mut counts = [[0u32; 3]; 3];
    for _ in 0..draws {
        let s = out.sample(&b, &mut rng).unwrap();
        counts[s.row(0)[0] as usize][s.row(0)[1] as usize] += 1;
    }
    for a in 0..3u32 {
        for c in (0..3u32).filter(|&c| c != a) {
            let p = plackett_luce(&lp, &[a, c]).exp();
            let f = counts[a as usize][c as usize] as f64 / draws as f64;
            // Four standard deviations of a binomial frequency.
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (f - p).abs() < 4.0 * sd + 1e-3,
                "pair ({a}, {c}): frequency {f}, probability {p}"
            );
        }
    }
}
