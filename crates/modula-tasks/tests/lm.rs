//! The language model over BPTT windows: backward against finite differences for every cell,
//! EM's E-step invariant over token positions, exact resumption, and learning on a tiny corpus.

use modula_cpu::Cpu;
use modula_data::{Streams, Vocab};
use modula_em::models::{LanguageModel, LmModelConfig, Recurrent};
use modula_em::{Algo, EPath, EStepSettings, Model, Routes, Search, Task, Trainer, estep};
use modula_modular::{ControllerOutput, Selection};
use modula_nn::gradcheck::{GradCheck, check};
use modula_nn::{Ctx, Grads, ParamStore};
use modula_tasks::{LmData, LmTask, LmTrainConfig};
use modula_tensor::Backend;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 7;

fn tiny_model(b: &Cpu, recurrent: Recurrent, seed: u64) -> (LanguageModel, ParamStore<Cpu>) {
    tiny_model_with(b, recurrent, seed, false)
}

/// [`tiny_model`], with the modules on a shared base or not.
fn tiny_model_with(
    b: &Cpu,
    recurrent: Recurrent,
    seed: u64,
    shared_base: bool,
) -> (LanguageModel, ParamStore<Cpu>) {
    let cfg = LmModelConfig {
        embed: 2,
        hidden: 2,
        modules: 3,
        k: 2,
        dropout: 0.3,
        controller_input_grad: true,
        dense_init_scale: 1.0,
        module_init_scale: 1.0,
        shared_base,
    };
    let mut params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = LanguageModel::new(b, &mut params, &cfg, recurrent, VOCAB, &mut rng);
    (model, params)
}

/// A random window of `steps` steps over `n` streams: input ids, targets and one random
/// selection per step for the model's `(M, K)`.
fn random_window(
    model: &LanguageModel,
    steps: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<Vec<u32>>, Vec<u32>, Vec<Selection>) {
    let ids: Vec<Vec<u32>> = (0..steps)
        .map(|_| (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect())
        .collect();
    let targets: Vec<u32> = (0..steps * n)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let (m, k) = model.modular_shape().unwrap_or((1, 1));
    let sels: Vec<Selection> = (0..steps)
        .map(|_| {
            Selection::new(
                k,
                (0..n * k).map(|_| rng.random_range(0..m as u32)).collect(),
            )
        })
        .collect();
    (ids, targets, sels)
}

/// How a gradient check's window is routed: the selections handed over as
/// [`Routes::Stored`] (the window-wide input projection), returned step by step by a router,
/// or run by the router while the controller's terms are taken at other (target) selections
/// ([`Routes::Guided`]).
#[derive(Clone, Copy, Debug)]
enum Via {
    Stored,
    Chosen,
    Guided,
}

fn via(pick: usize) -> Via {
    [Via::Stored, Via::Chosen, Via::Guided][pick % 3]
}

/// Checks the window's backward pass against finite differences, routed as `routes` says.
fn check_window(
    recurrent: Recurrent,
    steps: usize,
    n: usize,
    seed: u64,
    routes: Via,
) -> Result<(), String> {
    check_window_with(recurrent, steps, n, seed, routes, false)
}

/// A copy of `p` whose derived parameters are recomputed by `model`: what the trainer's
/// forward pass reads after an update of the trained parameters.
fn refreshed(b: &Cpu, model: &LanguageModel, p: &ParamStore<Cpu>) -> ParamStore<Cpu> {
    let mut q = ParamStore::new();
    for id in p.ids() {
        let copy = q.add(p.name(id), b.duplicate(p.get(id)));
        if p.is_derived(id) {
            q.mark_derived(copy);
        }
    }
    Model::<Cpu>::refresh(model, b, &mut q);
    q
}

/// [`check_window`], with the modules on a shared base or not: the objective reads the
/// modules recomputed from the base and the deltas, and the analytic gradients are folded
/// onto them, so the check covers the reparametrisation too.
fn check_window_with(
    recurrent: Recurrent,
    steps: usize,
    n: usize,
    seed: u64,
    via: Via,
    shared_base: bool,
) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let (model, mut params) = tiny_model_with(&b, recurrent, seed, shared_base);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
    let (ids, targets, sels) = random_window(&model, steps, n, &mut rng);
    // A guided window's targets: other selections than the routes the modules run.
    let (_, _, targets_of_guided) = random_window(&model, steps, n, &mut rng);
    let w_p: Vec<f32> = (0..steps * n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
    let d_nll = 0.37f32;
    let run = |b: &Cpu, p: &ParamStore<Cpu>| {
        // A fresh context per call: the same dropout masks and top-k noise every time.
        let mut ctx = Ctx::train(seed);
        let mut route = |t: usize, _: &_| Ok(sels[t].clone());
        let routes = match via {
            Via::Stored => Routes::Stored(&sels),
            Via::Chosen => Routes::Chosen(&mut route),
            Via::Guided => Routes::Guided {
                targets: &targets_of_guided,
                route: &mut route,
            },
        };
        let h0 = b.upload([n, 2], &h0);
        model
            .forward_window(b, p, &ids, &targets, &h0, routes, false, &mut ctx)
            .unwrap()
    };
    let uses_logp = matches!(recurrent, Recurrent::Modular { .. });
    check(
        &b,
        &mut params,
        &mut [],
        &GradCheck::default(),
        |b, p, _| {
            let out = run(b, &refreshed(b, &model, p));
            let nll: f64 = out.nll.iter().map(|&v| v as f64).sum();
            let lp: f64 = out
                .log_p
                .iter()
                .zip(&w_p)
                .map(|(&l, &w)| (l * w) as f64)
                .sum();
            d_nll as f64 * nll + lp + out.importance
        },
        |b, p, _| {
            let p = &refreshed(b, &model, p);
            let out = run(b, p);
            let mut g = Grads::new();
            let d_logp = if uses_logp { w_p.clone() } else { Vec::new() };
            model
                .backward_window(b, p, out.cache, d_nll, &d_logp, &mut g)
                .unwrap();
            Model::<Cpu>::fold_grads(&model, b, &mut g);
            (g, Vec::new())
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn modular_window_backward_matches_finite_differences(
        steps in 1usize..4, n in 1usize..3, seed in any::<u64>(), routes in 0usize..3,
    ) {
        check_window(Recurrent::Modular { modules: 3, k: 2 }, steps, n, seed, via(routes))
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dense_window_backward_matches_finite_differences(
        steps in 1usize..4, n in 1usize..3, seed in any::<u64>(),
    ) {
        check_window(Recurrent::Dense { hidden: 2 }, steps, n, seed, Via::Chosen)
            .map_err(TestCaseError::fail)?;
    }

    /// With k = M every module is kept, so no perturbation can change the top-k choice and
    /// the check covers the gate values and the importance loss smoothly.
    #[test]
    fn topk_window_backward_matches_finite_differences(
        steps in 1usize..4, n in 1usize..3, seed in any::<u64>(),
    ) {
        let cell = Recurrent::TopK { modules: 2, k: 2, importance_weight: 0.5 };
        check_window(cell, steps, n, seed, Via::Chosen).map_err(TestCaseError::fail)?;
    }

    /// Modules on a shared base: the gradients of the base (summed over modules) and of the
    /// deltas, for the controller-routed and the top-k gated cell.
    #[test]
    fn shared_base_window_backward_matches_finite_differences(
        steps in 1usize..4, n in 1usize..3, seed in any::<u64>(), routes in 0usize..3,
        topk in any::<bool>(),
    ) {
        let cell = if topk {
            Recurrent::TopK { modules: 2, k: 2, importance_weight: 0.5 }
        } else {
            Recurrent::Modular { modules: 3, k: 2 }
        };
        let routes = if topk { Via::Chosen } else { via(routes) };
        check_window_with(cell, steps, n, seed, routes, true)
            .map_err(TestCaseError::fail)?;
    }

    /// Guided routes run the modules along the router's choices (the same losses and states
    /// as routing by them) and take `log p(a_t | .)` at the targets, read off the controller's
    /// distributions the router saw.
    #[test]
    fn guided_routes_score_the_targets_along_the_routes(
        steps in 1usize..5, n in 1usize..4, seed in any::<u64>(),
    ) {
        let b = Cpu::with_threads(1);
        let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 2 }, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 3);
        let (ids, targets, sels) = random_window(&model, steps, n, &mut rng);
        let (_, _, goals) = random_window(&model, steps, n, &mut rng);
        let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h0 = b.upload([n, 2], &h0);
        let mut expected = Vec::new();
        let mut route = |t: usize, out: &ControllerOutput<Cpu>| {
            let lp = b.download(&out.log_probs)?;
            expected.extend((0..n).map(|i| {
                (0..2).map(|s| lp[(i * 2 + s) * 3 + goals[t].as_slice()[i * 2 + s] as usize]).sum::<f32>()
            }));
            Ok(sels[t].clone())
        };
        let guided = model
            .forward_window(&b, &params, &ids, &targets, &h0, Routes::Guided { targets: &goals, route: &mut route }, false, &mut Ctx::eval())
            .unwrap();
        let routed = model
            .forward_window(&b, &params, &ids, &targets, &h0, Routes::Stored(&sels), false, &mut Ctx::eval())
            .unwrap();
        prop_assert_eq!(&guided.selections, &sels);
        for (g, r) in guided.nll.iter().zip(&routed.nll) {
            prop_assert!((g - r).abs() <= 1e-5 * r.abs().max(1.0), "{} vs {}", g, r);
        }
        prop_assert_eq!(guided.log_p.len(), expected.len());
        for (g, e) in guided.log_p.iter().zip(&expected) {
            prop_assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{} vs {}", g, e);
        }
    }

    /// The window-wide input projection of fixed routes is a fast path of the step-by-step
    /// one: the same selections give the same losses, states and gradients.
    #[test]
    fn fixed_routes_match_step_by_step_routes(
        steps in 1usize..6, n in 1usize..5, seed in any::<u64>(),
    ) {
        let b = Cpu::with_threads(1);
        let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 2 }, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 2);
        let (ids, targets, sels) = random_window(&model, steps, n, &mut rng);
        let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h0 = b.upload([n, 2], &h0);
        let d_logp: Vec<f32> = (0..steps * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let run = |fixed: bool| {
            let mut route = |t: usize, _: &_| Ok(sels[t].clone());
            let routes = if fixed { Routes::Stored(&sels) } else { Routes::Chosen(&mut route) };
            let out = model
                .forward_window(&b, &params, &ids, &targets, &h0, routes, false, &mut Ctx::train(seed))
                .unwrap();
            let mut values = out.nll.clone();
            values.extend(&out.log_p);
            values.extend(b.download(&out.h_last).unwrap());
            let mut g = Grads::new();
            model.backward_window(&b, &params, out.cache, 0.5, &d_logp, &mut g).unwrap();
            for id in params.ids() {
                values.extend(g.get(id).map(|t| b.download(t).unwrap()).unwrap_or_default());
            }
            values
        };
        let (fast, slow) = (run(true), run(false));
        prop_assert_eq!(fast.len(), slow.len());
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            prop_assert!((f - s).abs() <= 1e-5 + 1e-5 * s.abs(), "value {i}: {f} vs {s}");
        }
    }
}

/// A corpus where each word determines the next up to a little noise: learnable quickly.
fn patterned_streams(batch: usize, len: usize, seed: u64) -> Streams {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tokens = Vec::with_capacity(batch * len);
    let mut w = 0u32;
    for _ in 0..batch * len {
        tokens.push(w);
        w = if rng.random::<f32>() < 0.9 {
            (w * 3 + 1) % VOCAB as u32
        } else {
            rng.random_range(0..VOCAB as u32)
        };
    }
    Streams {
        batch,
        len,
        first_index: 0,
        tokens,
    }
}

fn trainer(algo: Algo, seed: u64) -> Trainer<Cpu, LmTask<Cpu>> {
    let train = LmTrainConfig {
        algo,
        samples: 4,
        e_every: 3,
        ..LmTrainConfig::default()
    };
    trainer_with(&train, seed)
}

/// EM's E-step on the trainer's next window with the settings `estep`, into `table`.
fn e_step(
    t: &mut Trainer<Cpu, LmTask<Cpu>>,
    table: &mut modula_em::AssignmentTable,
    estep: &EStepSettings,
    seed: u64,
) -> modula_em::EStats {
    let batch = t.task.batch(&t.backend, t.step);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    estep::e_step(
        &t.model,
        &t.backend,
        &t.params,
        &batch,
        table,
        estep,
        &mut rng,
        &mut Ctx::eval(),
    )
    .unwrap()
}

/// Per-step search settings with `samples` candidates and the given prior weight.
fn per_step(samples: usize, prior_weight: f32) -> EStepSettings {
    EStepSettings {
        search: Search::Step,
        prior_weight,
        ..EStepSettings::paths(samples)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// For fixed parameters, an E-step never lowers the score of a stream's stored path, and
    /// what it stores scores exactly what it reported (re-scored with the stored path only).
    #[test]
    fn e_step_never_lowers_the_stored_paths_score(
        seed in any::<u64>(), warmup in 0usize..3, search in 0usize..5,
    ) {
        let mut t = trainer(Algo::Em, seed);
        for _ in 0..warmup {
            t.step().unwrap();
        }
        let mut table = t.table().cloned().unwrap();
        // Whole paths, or a per-step search with or without the prior, a capacity limit,
        // sampled choices or a longer horizon: whatever the search finds, the stored score
        // cannot fall.
        let estep = match search {
            0 => EStepSettings::paths(4),
            1 => per_step(4, 0.0),
            2 => EStepSettings { capacity: 1.0, ..per_step(2, 1.0) },
            3 => EStepSettings { sample: true, uniform: 0.5, ..per_step(4, 0.5) },
            _ => EStepSettings { horizon: 3, ..per_step(4, 1.0) },
        };
        let before = e_step(&mut t, &mut table, &estep, seed);
        prop_assert!(before.score_after >= before.score_before);
        prop_assert!((0.0..=1.0).contains(&before.changed));
        let again = e_step(&mut t, &mut table, &EStepSettings::paths(1), seed);
        prop_assert_eq!(again.changed, 0.0);
        // The same paths from the same state: equal up to f32 rounding in batches of another size.
        let tol = 1e-5 * before.score_after.abs().max(1.0);
        prop_assert!((again.score_before - before.score_after).abs() < tol, "{} vs {}", again.score_before, before.score_after);
    }
}

#[test]
fn every_algorithm_learns_the_patterned_corpus() {
    for algo in [Algo::Em, Algo::Reinforce, Algo::Topk, Algo::Dense] {
        let mut t = trainer(algo, 3);
        let probe = patterned_streams(4, 61, 99);
        let eval = |t: &Trainer<Cpu, LmTask<Cpu>>| {
            t.task
                .evaluate(&t.backend, &t.model, &t.params, &probe, 0, &mut |_, _| {})
                .unwrap()
        };
        let before = eval(&t);
        while t.task.epoch < 8 {
            t.step().unwrap();
        }
        let after = eval(&t);
        assert!(
            after.perplexity < 0.6 * before.perplexity && after.perplexity < 3.0,
            "{}: perplexity {} -> {}",
            algo.name(),
            before.perplexity,
            after.perplexity
        );
    }
}

#[test]
fn a_restored_trainer_continues_bit_for_bit() {
    for algo in [Algo::Em, Algo::Reinforce, Algo::Topk] {
        let mut a = trainer(algo, 5);
        for _ in 0..7 {
            a.step().unwrap();
        }
        let ck = a.checkpoint().unwrap();
        let ck = modula_nn::Checkpoint::from_bytes(&ck.to_bytes().unwrap(), "mem").unwrap();
        let mut b = trainer(algo, 5);
        b.restore(&ck).unwrap();
        for _ in 0..9 {
            assert_eq!(a.step().unwrap(), b.step().unwrap(), "{}", algo.name());
        }
        for id in a.params.ids() {
            let (x, y) = (a.params.get(id), b.params.get(id));
            assert_eq!(
                a.backend.download(x).unwrap(),
                b.backend.download(y).unwrap()
            );
        }
        assert_eq!(a.table(), b.table());
    }
}

#[test]
fn a_checkpoint_from_another_algorithm_is_refused() {
    let a = trainer(Algo::Em, 1);
    let ck = a.checkpoint().unwrap();
    let mut b = trainer(Algo::Reinforce, 1);
    let err = b.restore(&ck).unwrap_err().to_string();
    assert!(err.contains("em") && err.contains("reinforce"), "{err}");
}

#[test]
fn every_window_is_e_stepped_once_in_e_every_epochs() {
    // 12 windows per epoch and e_every = 3 (the patterned corpus): 12 % 3 == 0, the case
    // where `step % e_every` would E-step the same windows every epoch.
    let mut t = trainer(Algo::Em, 2);
    let windows = t.task.windows_per_epoch();
    let e_every = t.settings.e_every;
    assert_eq!(windows % e_every, 0);
    let mut count = vec![0usize; windows];
    let mut tokens = 0u64;
    while t.task.epoch < e_every {
        let w = t.task.window;
        let stats = t.step().unwrap();
        if stats.e_step.is_some() {
            count[w] += 1;
        }
        // tokens_seen counts exactly the tokens the windows trained on.
        tokens += stats.gradient.unwrap().units as u64;
        assert_eq!(t.task.tokens_seen(), tokens);
    }
    assert_eq!(count, vec![1; windows]);
}

/// The parameter counts the dense baseline is matched by are those of the built models.
#[test]
fn parameter_formulas_count_the_built_models() {
    let b = Cpu::with_threads(1);
    let cfg = LmModelConfig {
        embed: 3,
        hidden: 4,
        modules: 5,
        k: 2,
        dropout: 0.0,
        controller_input_grad: true,
        dense_init_scale: 1.0,
        module_init_scale: 1.0,
        shared_base: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut count = |recurrent| {
        let mut params = ParamStore::new();
        LanguageModel::new(&b, &mut params, &cfg, recurrent, VOCAB, &mut rng);
        params.num_scalars(&b)
    };
    let modular = count(Recurrent::Modular { modules: 5, k: 2 });
    assert_eq!(modular, cfg.modular_params(VOCAB));
    assert_eq!(
        count(Recurrent::Dense { hidden: 6 }),
        cfg.dense_params(VOCAB, 6)
    );
    // A shared base adds one module's weights; the modules it derives are not counted.
    let shared = LmModelConfig {
        shared_base: true,
        ..cfg.clone()
    };
    let mut params = ParamStore::new();
    let recurrent = Recurrent::Modular { modules: 5, k: 2 };
    LanguageModel::new(&b, &mut params, &shared, recurrent, VOCAB, &mut rng);
    assert_eq!(params.num_scalars(&b), shared.modular_params(VOCAB));
    assert_eq!(
        shared.modular_params(VOCAB) - modular,
        (3 + 4) * 3 * 4 + 6 * 4
    );
}

/// The E-step's scores (softmax run over chunks of steps, the last one partial here: 700
/// candidate rows a step, two steps a chunk, five steps) equal each candidate path's window
/// log-likelihood plus its controller log-probability computed by `forward_window` in
/// evaluation mode on that path.
#[test]
fn e_step_scores_are_the_window_log_likelihoods_of_their_paths() {
    let b = Cpu::with_threads(1);
    let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 2 }, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (steps, n, samples) = (5, 4, 175);
    let (ids, targets, stored) = random_window(&model, steps, n, &mut rng);
    let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
    let h0 = b.upload([n, 2], &h0);
    let estep = EStepSettings::paths(samples);
    let (scores, chosen) = model
        .score_paths(
            &b,
            &params,
            &ids,
            &targets,
            &h0,
            &stored,
            &estep,
            &mut rng,
            &mut Ctx::eval(),
        )
        .unwrap();
    for s in [0, 1, samples / 2, samples - 1] {
        let path: Vec<Selection> = chosen
            .iter()
            .map(|sel| Selection::new(2, sel.as_slice()[s * n * 2..(s + 1) * n * 2].to_vec()))
            .collect();
        let out = model
            .forward_window(
                &b,
                &params,
                &ids,
                &targets,
                &h0,
                Routes::Stored(&path),
                false,
                &mut Ctx::eval(),
            )
            .unwrap();
        for i in 0..n {
            let want: f64 = (0..steps)
                .map(|t| -(out.nll[t * n + i] as f64) + out.log_p[t * n + i] as f64)
                .sum();
            let got = scores[s * n + i];
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "candidate {s}, stream {i}: {got} vs {want}"
            );
        }
    }
}

/// `-log p(w_{t+1} | .)` and `log p(a_t | .)` of step `t` of stream `i` when the window's
/// first `t + 1` steps follow `path` (evaluation mode): the brute-force reference of the
/// per-step search and of the filtered evaluation.
#[allow(clippy::too_many_arguments)]
fn step_terms(
    b: &Cpu,
    model: &LanguageModel,
    params: &ParamStore<Cpu>,
    ids: &[Vec<u32>],
    targets: &[u32],
    h0: &<Cpu as Backend>::Tensor,
    path: &[Selection],
    t: usize,
    i: usize,
) -> (f64, f64) {
    let n = ids[0].len();
    let out = model
        .forward_window(
            b,
            params,
            &ids[..=t],
            &targets[..(t + 1) * n],
            h0,
            Routes::Stored(&path[..=t]),
            false,
            &mut Ctx::eval(),
        )
        .unwrap();
    (out.nll[t * n + i] as f64, out.log_p[t * n + i] as f64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// With K = 1 and S = M, the per-step search's path (before the E-step compares it with
    /// the stored one) takes at every step the exact argmax over all M modules of
    /// `-log p(w_{t+1} | h_t(m)) + prior * log p(m | .)`, the prefix being its own earlier
    /// choices (along the greedy path: the controller's argmax at every earlier step); and
    /// its reported window scores are those of the two paths (along the greedy path: of the
    /// two sets of targets, each scored from the greedy prefix).
    #[test]
    fn per_step_search_takes_the_exact_per_step_argmax(
        seed in any::<u64>(), prior in 0usize..3, steps in 1usize..5, n in 1usize..4,
        greedy in any::<bool>(),
    ) {
        let b = Cpu::with_threads(1);
        let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 1 }, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 5);
        let (ids, targets, stored) = random_window(&model, steps, n, &mut rng);
        let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h0 = b.upload([n, 2], &h0);
        let weight = prior as f32 * 0.5;
        let path_kind = if greedy { EPath::Greedy } else { EPath::Best };
        let estep = EStepSettings { path: path_kind, ..per_step(3, weight) };
        let cands = model
            .search_steps(&b, &params, &ids, &targets, &h0, &stored, &estep, &mut rng, &mut Ctx::eval())
            .unwrap();
        prop_assert_eq!(cands.samples, 2);
        // Candidate 1 of each step's selection is the path found.
        let found: Vec<u32> = (0..steps)
            .flat_map(|t| cands.selections[t].as_slice()[n..2 * n].to_vec())
            .collect();
        for i in 0..n {
            let mut path: Vec<Selection> = stored.clone();
            let (mut stored_score, mut found_score) = (0.0, 0.0);
            for t in 0..steps {
                if !greedy {
                    let (nll, lp) = step_terms(&b, &model, &params, &ids, &targets, &h0, &stored, t, i);
                    stored_score += -nll + lp;
                }
                // Every module from the prefix: the best by the search's score, and the
                // controller's own choice (its distribution does not depend on the module).
                let mut terms = Vec::new();
                for m in 0..3u32 {
                    let mut picks = path[t].as_slice().to_vec();
                    picks[i] = m;
                    path[t] = Selection::new(1, picks);
                    terms.push(step_terms(&b, &model, &params, &ids, &targets, &h0, &path, t, i));
                }
                let search = |m: usize| -terms[m].0 + weight as f64 * terms[m].1;
                let best = (0..3).fold(0, |a, m| if search(m) > search(a) + 1e-9 { m } else { a });
                let mode = (0..3).fold(0, |a, m| if terms[m].1 > terms[a].1 { m } else { a });
                let got = found[t * n + i] as usize;
                // Equal scores (up to rounding) may go either way.
                prop_assert!(
                    got == best || (search(got) - search(best)).abs() < 1e-5,
                    "stream {} step {}: search took {}, the argmax is {}", i, t, got, best
                );
                found_score += -terms[got].0 + terms[got].1;
                // Along the greedy path the stored target is scored from the same prefix,
                // and the walk goes on with the controller's choice, not the search's.
                let next = if greedy {
                    let s = stored[t].as_slice()[i] as usize;
                    stored_score += -terms[s].0 + terms[s].1;
                    mode
                } else {
                    got
                };
                let mut picks = path[t].as_slice().to_vec();
                picks[i] = next as u32;
                path[t] = Selection::new(1, picks);
            }
            prop_assert!((cands.scores[i] - stored_score).abs() < 1e-4, "{} vs {}", cands.scores[i], stored_score);
            prop_assert!((cands.scores[n + i] - found_score).abs() < 1e-4, "{} vs {}", cands.scores[n + i], found_score);
        }
    }

    /// Along the greedy path with proposals (K = 2 of M = 3, so the modules are not
    /// enumerated): the walk follows the controller's greedy selections, candidate 0 is the
    /// greedy selection itself, so each stored target scores at least as well as it from the
    /// same prefix, and the reported window scores are the targets' along that prefix.
    #[test]
    fn greedy_path_with_proposals_follows_the_controller(
        seed in any::<u64>(), steps in 1usize..5, n in 1usize..4,
    ) {
        let b = Cpu::with_threads(1);
        let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 2 }, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 7);
        let (ids, targets, stored) = random_window(&model, steps, n, &mut rng);
        let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h0 = b.upload([n, 2], &h0);
        let estep = EStepSettings { path: EPath::Greedy, ..per_step(3, 0.0) };
        let cands = model
            .search_steps(&b, &params, &ids, &targets, &h0, &stored, &estep, &mut rng, &mut Ctx::eval())
            .unwrap();
        // The greedy path itself, routed by the controller's argmax.
        let mut greedy = |_: usize, out: &ControllerOutput<Cpu>| out.greedy(&b);
        let walk = model
            .forward_window(&b, &params, &ids, &targets, &h0, Routes::Chosen(&mut greedy), false, &mut Ctx::eval())
            .unwrap()
            .selections;
        for i in 0..n {
            let (mut stored_score, mut found_score) = (0.0, 0.0);
            for t in 0..steps {
                // Step t of stream i with selection `pick`, after the greedy prefix.
                let score = |pick: &[u32]| {
                    let mut path = walk.clone();
                    let mut picks = path[t].as_slice().to_vec();
                    picks[2 * i..2 * i + 2].copy_from_slice(pick);
                    path[t] = Selection::new(2, picks);
                    step_terms(&b, &model, &params, &ids, &targets, &h0, &path, t, i)
                };
                let found = &cands.selections[t].as_slice()[2 * (n + i)..2 * (n + i) + 2];
                let (nll, lp) = score(found);
                let (greedy_nll, _) = score(&walk[t].as_slice()[2 * i..2 * i + 2]);
                prop_assert!(nll <= greedy_nll + 1e-5, "step {} stream {}: target {} against greedy {}", t, i, nll, greedy_nll);
                found_score += -nll + lp;
                let (nll, lp) = score(&stored[t].as_slice()[2 * i..2 * i + 2]);
                stored_score += -nll + lp;
            }
            prop_assert!((cands.scores[i] - stored_score).abs() < 1e-4, "{} vs {}", cands.scores[i], stored_score);
            prop_assert!((cands.scores[n + i] - found_score).abs() < 1e-4, "{} vs {}", cands.scores[n + i], found_score);
        }
    }

    /// The filtered mixture's per-step likelihood equals the brute-force marginal
    /// `sum_m p(m | .) p(w_{t+1} | h_t(m))` along the committed routes, each committed route
    /// is the posterior argmax, and the posterior figure is that route's likelihood.
    #[test]
    fn filtered_mixture_is_the_brute_force_marginal(
        seed in any::<u64>(), steps in 1usize..5, n in 1usize..4,
    ) {
        let b = Cpu::with_threads(1);
        let (model, params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 1 }, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 9);
        let (ids, targets, _) = random_window(&model, steps, n, &mut rng);
        let h0: Vec<f32> = (0..n * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let h0 = b.upload([n, 2], &h0);
        let out = model.filtered_window(&b, &params, &ids, &targets, &h0, 10, &mut rng).unwrap();
        for i in 0..n {
            for t in 0..steps {
                let mut path = out.selections.clone();
                let mut joint = Vec::new();
                for m in 0..3u32 {
                    let mut picks = path[t].as_slice().to_vec();
                    picks[i] = m;
                    path[t] = Selection::new(1, picks);
                    let (nll, lp) = step_terms(&b, &model, &params, &ids, &targets, &h0, &path, t, i);
                    joint.push((lp - nll, nll));
                }
                let marginal: f64 = joint.iter().map(|(j, _)| j.exp()).sum();
                let got = out.mixture_nll[t * n + i];
                prop_assert!((got + marginal.ln()).abs() < 1e-4, "step {} stream {}: {} vs {}", t, i, got, -marginal.ln());
                let committed = out.selections[t].as_slice()[i] as usize;
                let best = joint.iter().map(|(j, _)| *j).fold(f64::NEG_INFINITY, f64::max);
                prop_assert!((joint[committed].0 - best).abs() < 1e-5);
                prop_assert!((out.posterior_nll[t * n + i] - joint[committed].1).abs() < 1e-4);
            }
        }
    }
}

/// A run with the per-step E-step on every window is reproducible from its seed and resumes
/// bit for bit, and an epoch of it visits every training position.
#[test]
fn per_step_em_is_reproducible_resumable_and_covers_the_corpus() {
    for e_path in [EPath::Best, EPath::Greedy] {
        per_step_em_run(e_path);
    }
}

/// [`per_step_em_is_reproducible_resumable_and_covers_the_corpus`] along one kind of path.
fn per_step_em_run(e_path: EPath) {
    let train = LmTrainConfig {
        algo: Algo::Em,
        e_every: 1,
        e_search: Search::Step,
        e_prior: 0.5,
        e_path,
        samples: 3,
        ctrl_mask: true,
        ..LmTrainConfig::default()
    };
    let build = |seed| trainer_with(&train, seed);
    let (mut a, mut b) = (build(4), build(4));
    for _ in 0..5 {
        assert_eq!(a.step().unwrap(), b.step().unwrap());
    }
    let ck = a.checkpoint().unwrap();
    let ck = modula_nn::Checkpoint::from_bytes(&ck.to_bytes().unwrap(), "mem").unwrap();
    let mut c = build(4);
    c.restore(&ck).unwrap();
    let mut coverage = 0.0;
    while a.task.epoch < 1 {
        let (x, y) = (a.step().unwrap(), c.step().unwrap());
        assert_eq!(x, y);
        coverage = x.e_step.expect("an E-step every window").coverage;
    }
    assert_eq!(a.table(), c.table());
    assert_eq!(
        coverage, 1.0,
        "one epoch of E-steps on every window visits every position ({e_path:?})"
    );
}

/// Walking the greedy path is a per-step search's option: a whole-path E-step refuses it,
/// naming the field.
#[test]
fn the_greedy_path_needs_the_per_step_search() {
    let train = LmTrainConfig {
        e_path: EPath::Greedy,
        ..LmTrainConfig::default()
    };
    let err = train.validate().unwrap_err();
    assert_eq!(err.field, "train.e_path");
    let step = LmTrainConfig {
        e_search: Search::Step,
        ..train
    };
    assert_eq!(step.validate(), Ok(()));
}

/// The trainer of a tiny modular GRU (M = 3, K = 1) on the patterned corpus, with the
/// algorithm and E-step settings of `train` (windows of 5 steps over 4 streams).
fn trainer_with(train: &LmTrainConfig, seed: u64) -> Trainer<Cpu, LmTask<Cpu>> {
    trainer_on(train, false, seed)
}

/// [`trainer_with`], with the modules on a shared base or not.
fn trainer_on(train: &LmTrainConfig, shared_base: bool, seed: u64) -> Trainer<Cpu, LmTask<Cpu>> {
    let b = Cpu::with_threads(1);
    let model_cfg = LmModelConfig {
        embed: 8,
        hidden: 8,
        modules: 3,
        k: 1,
        dropout: 0.0,
        controller_input_grad: true,
        dense_init_scale: 1.0,
        module_init_scale: 1.0,
        shared_base,
    };
    let train = LmTrainConfig {
        bptt: 5,
        batch_size: 4,
        lr: 0.01,
        ..train.clone()
    };
    let words: Vec<String> = (0..VOCAB).map(|w| format!("w{w}")).collect();
    let data = LmData {
        vocab: Vocab::from_words(words.iter().map(String::as_str)),
        train: patterned_streams(4, 61, seed),
        valid: patterned_streams(4, 11, seed ^ 1),
        test: patterned_streams(4, 11, seed ^ 2),
    };
    LmTask::trainer(b, data, &model_cfg, &train, seed)
}

/// Upcycled without noise, a modular GRU with K = 1 computes exactly the dense GRU it came
/// from, whatever the routes; a checkpoint of another width is refused, naming the tensor.
#[test]
fn an_upcycled_model_computes_its_dense_parent() {
    let b = Cpu::with_threads(1);
    let (dense, dense_params) = tiny_model(&b, Recurrent::Dense { hidden: 2 }, 21);
    let mut ck = modula_nn::Checkpoint::new();
    ck.add_params(&b, &dense_params).unwrap();
    let (modular, mut params) = tiny_model(&b, Recurrent::Modular { modules: 3, k: 1 }, 22);
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    modula_tasks::upcycle(&b, &mut params, &ck, 3, 0.0, &mut rng).unwrap();
    let (ids, targets, routes) = random_window(&modular, 4, 3, &mut rng);
    let h0 = b.zeros([3, 2]);
    let run = |model: &LanguageModel, params: &ParamStore<Cpu>, routes: Routes<'_, '_, Cpu>| {
        model
            .forward_window(
                &b,
                params,
                &ids,
                &targets,
                &h0,
                routes,
                false,
                &mut Ctx::eval(),
            )
            .unwrap()
            .nll
    };
    let want = run(&dense, &dense_params, Routes::Stored(&[]));
    let got = run(&modular, &params, Routes::Stored(&routes));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
    let (_, wide_params) = tiny_model(&b, Recurrent::Dense { hidden: 3 }, 24);
    let mut wide = modula_nn::Checkpoint::new();
    wide.add_params(&b, &wide_params).unwrap();
    let err = modula_tasks::upcycle(&b, &mut params, &wide, 3, 0.1, &mut rng).unwrap_err();
    assert!(
        err.contains("softmax.weight") || err.contains("gru."),
        "{err}"
    );
}

/// A shared-base EM run: after every step each module equals the base plus its delta, the
/// base is trained, and a restored run continues bit for bit.
#[test]
fn a_shared_base_run_keeps_its_modules_derived_and_resumes_exactly() {
    let train = LmTrainConfig {
        algo: Algo::Em,
        samples: 4,
        e_every: 3,
        ..LmTrainConfig::default()
    };
    let mut a = trainer_on(&train, true, 5);
    let values = |t: &Trainer<Cpu, LmTask<Cpu>>, name: &str| {
        let id = t.params.find(name).unwrap();
        t.backend.download(t.params.get(id)).unwrap()
    };
    let base_before = values(&a, "gru.recurrent.base.weight");
    for _ in 0..7 {
        a.step().unwrap();
    }
    assert_ne!(values(&a, "gru.recurrent.base.weight"), base_before);
    for side in ["gru.input", "gru.recurrent"] {
        for part in ["weight", "bias"] {
            let base = values(&a, &format!("{side}.base.{part}"));
            let delta = values(&a, &format!("{side}.delta.{part}"));
            let module = values(&a, &format!("{side}.{part}"));
            assert_eq!(module.len(), delta.len());
            for (i, (v, d)) in module.iter().zip(&delta).enumerate() {
                let want = base[i % base.len()] + d;
                assert!(
                    (v - want).abs() <= 1e-6,
                    "{side}.{part}[{i}]: {v} vs {want}"
                );
            }
        }
    }
    let ck = a.checkpoint().unwrap();
    let ck = modula_nn::Checkpoint::from_bytes(&ck.to_bytes().unwrap(), "mem").unwrap();
    let mut b = trainer_on(&train, true, 5);
    b.restore(&ck).unwrap();
    for _ in 0..9 {
        assert_eq!(a.step().unwrap(), b.step().unwrap());
    }
    assert_eq!(
        values(&a, "gru.input.weight"),
        values(&b, "gru.input.weight")
    );
}
