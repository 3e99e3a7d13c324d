//! Invariants of generalized EM and of the training loop, on the toy task's network.

use modula_cpu::Cpu;
use modula_data::toy::ToyConfig;
use modula_em::estep::e_step;
use modula_em::models::{FeedForward, MlpConfig, MlpInput, ModularMlp};
use modula_em::{
    Algo, AssignmentTable, Batch, EStepSettings, Group, Model, Routes, Target, Trainer,
};
use modula_modular::{ControllerOutput, Selection};
use modula_nn::{Adam, Checkpoint, Ctx, Grads, Optimizer, ParamStore};
use modula_tasks::{ToyTask, ToyTrainConfig};
use modula_tensor::{Backend, BackendError};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small random regression problem and network.
struct Setup {
    b: Cpu,
    params: ParamStore<Cpu>,
    net: ModularMlp,
    batch: Batch<MlpInput<Cpu>>,
    idx: Vec<u32>,
    table: AssignmentTable,
}

fn setup(n: usize, d: usize, m: usize, k: usize, layers: usize, seed: u64) -> Setup {
    let b = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = MlpConfig {
        modules: m,
        k,
        layers,
        hidden: 3,
        variance: 0.5,
    };
    let mut params = ParamStore::new();
    let net = ModularMlp::new(
        &b,
        &mut params,
        d,
        1,
        &model,
        Algo::Em,
        Default::default(),
        0.0,
        &mut rng,
    );
    let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    // Examples are a random subset of a larger table, as in a real mini-batch.
    let examples = 3 * n;
    let mut idx: Vec<u32> = (0..examples as u32).collect();
    idx.truncate(n);
    idx.reverse();
    let batch = Batch {
        input: MlpInput {
            x: b.upload([n, d], &x),
            target: Target::Regression {
                y: b.upload([n, 1], &y),
                variance: 0.5,
            },
        },
        groups: (0..layers)
            .map(|layer| Group {
                layer,
                keys: idx.clone(),
            })
            .collect(),
        examples: n,
        units: n,
    };
    let table = AssignmentTable::random(examples, &net.layer_shapes(), &mut rng);
    Setup {
        b,
        params,
        net,
        batch,
        idx,
        table,
    }
}

/// Score `log p(y | x, a*) + log p(a* | x)` of each example's stored assignment.
fn stored_scores(s: &Setup, table: &AssignmentTable) -> Vec<f64> {
    let mut route =
        |l: usize, _: &ControllerOutput<Cpu>| Ok::<_, BackendError>(table.selection(l, &s.idx));
    let out = s
        .net
        .forward_tensors(
            &s.b,
            &s.params,
            &s.batch.input.x,
            &s.batch.input.target,
            &mut route,
            false,
            false,
            &mut Ctx::eval(),
        )
        .unwrap();
    let task = s.b.download(&out.task_nll).unwrap();
    let logp = s.b.download(&out.ctrl_logp).unwrap();
    task.iter()
        .zip(&logp)
        .map(|(&t, &l)| -(t as f64) + l as f64)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn e_step_never_lowers_a_stored_score_and_keeps_indices_in_range(
        n in 1usize..12, d in 1usize..4, m in 1usize..5, k_raw in 1usize..4, layers in 1usize..3,
        samples in 1usize..6, seed in any::<u64>(),
    ) {
        let k = 1 + (k_raw - 1) % m;
        let mut s = setup(n, d, m, k, layers, seed);
        let before = stored_scores(&s, &s.table);
        let mut table = s.table.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 7);
        let stats = e_step(&s.net, &s.b, &s.params, &s.batch, &mut table, &EStepSettings::paths(samples), &mut rng, &mut Ctx::eval()).unwrap();
        let after = stored_scores(&s, &table);
        for (i, (a, bf)) in after.iter().zip(&before).enumerate() {
            prop_assert!(*a >= bf - 1e-4, "example {} score fell from {} to {}", i, bf, a);
        }
        prop_assert!(stats.score_after >= stats.score_before - 1e-9);
        for layer in table.layers() {
            prop_assert!(layer.as_slice().iter().all(|&a| (a as usize) < layer.modules()));
        }
        if samples == 1 {
            // With only the stored candidate there is nothing to switch to.
            prop_assert_eq!(stats.changed, 0.0);
            prop_assert!(table == s.table);
        }
        s.table = table;
    }

    #[test]
    fn ancestral_probabilities_over_all_selections_sum_to_one(
        d in 1usize..3, m in 1usize..4, k in 1usize..3, seed in any::<u64>(),
    ) {
        // Two stacked layers: the second controller reads an input that depends on the first
        // layer's choice, so p(a1, a2 | x) = p(a1 | x) p(a2 | h(x, a1)) must still sum to 1.
        let k = k.min(m);
        let s = setup(2, d, m, k, 2, seed);
        let per_layer = m.pow(k as u32);
        let mut total = [0.0f64; 2];
        for code in 0..per_layer * per_layer {
            let pick = |c: usize| -> Vec<u32> { (0..k).map(|j| ((c / m.pow(j as u32)) % m) as u32).collect() };
            let choices = [pick(code % per_layer), pick(code / per_layer)];
            let mut route = |l: usize, _: &ControllerOutput<Cpu>| {
                Ok::<_, BackendError>(Selection::new(k, [choices[l].clone(), choices[l].clone()].concat()))
            };
            let out = s.net.forward_tensors(&s.b, &s.params, &s.batch.input.x, &s.batch.input.target, &mut route, false, false, &mut Ctx::eval()).unwrap();
            for (t, l) in total.iter_mut().zip(s.b.download(&out.ctrl_logp).unwrap()) {
                *t += (l as f64).exp();
            }
        }
        for t in total {
            prop_assert!((t - 1.0).abs() < 1e-4, "sum of probabilities {}", t);
        }
    }
}

#[test]
fn ties_keep_the_stored_assignment() {
    // Identical modules and a constant controller score every candidate the same (K = 1, so
    // no candidate merges duplicate slots into a different output).
    let mut s = setup(8, 2, 4, 1, 1, 3);
    let ids: Vec<_> = s.params.ids().collect();
    for id in ids {
        let shape = s.b.shape(s.params.get(id));
        let name = s.params.name(id).to_string();
        let value = if name.contains("modules.weight") {
            let block: Vec<f32> = (0..shape[0] / 4 * shape[1])
                .map(|i| i as f32 * 0.1)
                .collect();
            s.b.upload(shape, &block.repeat(4))
        } else {
            s.b.zeros(shape)
        };
        *s.params.get_mut(id) = value;
    }
    let mut table = s.table.clone();
    let stats = e_step(
        &s.net,
        &s.b,
        &s.params,
        &s.batch,
        &mut table,
        &EStepSettings::paths(10),
        &mut ChaCha8Rng::seed_from_u64(1),
        &mut Ctx::eval(),
    )
    .unwrap();
    assert_eq!(stats.changed, 0.0);
    assert!(table == s.table);
}

#[test]
fn with_one_sample_em_is_supervised_training_on_the_stored_assignments() {
    let toy = ToyConfig {
        train: 256,
        test: 64,
        ..ToyConfig::default()
    };
    let model = MlpConfig::default();
    let train = ToyTrainConfig {
        samples: 1,
        steps: 60,
        batch_size: 32,
        ..ToyTrainConfig::default()
    };
    let mut em = ToyTask::trainer(Cpu::with_threads(1), &toy, &model, &train, 5);
    let initial_table = em.table().cloned().unwrap();
    for _ in 0..train.steps {
        em.step().unwrap();
    }
    assert!(em.table() == Some(&initial_table), "S = 1 never changes a*");

    // The same M-steps by hand: supervised training of modules and controller on a*.
    let mut manual = ToyTask::trainer(Cpu::with_threads(1), &toy, &model, &train, 5);
    let b = Cpu::with_threads(1);
    let mut adam = Adam::new(train.lr);
    for step in 0..train.steps as u64 {
        let idx = manual.task.batch_indices(step);
        if step % train.e_every as u64 == 0 {
            continue;
        }
        let t = &manual.task.data.train;
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&i| t.x[i as usize * t.dim..(i as usize + 1) * t.dim].to_vec())
            .collect();
        let y: Vec<f32> = idx.iter().map(|&i| t.y[i as usize]).collect();
        let n = idx.len();
        let input = MlpInput {
            x: b.upload([n, t.dim], &x),
            target: Target::Regression {
                y: b.upload([n, 1], &y),
                variance: model.variance,
            },
        };
        let stored = vec![initial_table.selection(0, &idx)];
        let net = &manual.model;
        let out = net
            .forward(
                &b,
                &manual.params,
                &input,
                Routes::Stored(&stored),
                false,
                &mut Ctx::train(0),
            )
            .unwrap();
        let mut grads = Grads::new();
        let w = 1.0 / n as f32;
        net.backward(&b, &manual.params, out.cache, w, &vec![-w; n], &mut grads)
            .unwrap();
        adam.step(&b, &mut manual.params, &grads);
    }
    for id in em.params.ids() {
        assert_eq!(
            b.download(em.params.get(id)).unwrap(),
            b.download(manual.params.get(id)).unwrap(),
            "{}",
            em.params.name(id)
        );
    }
}

fn run(algo: Algo, steps: usize, seed: u64) -> Trainer<Cpu, ToyTask<Cpu>> {
    let toy = ToyConfig {
        train: 512,
        test: 128,
        ..ToyConfig::default()
    };
    let train = ToyTrainConfig {
        algo,
        steps: steps.max(1),
        batch_size: 32,
        ..ToyTrainConfig::default()
    };
    let mut exp = ToyTask::trainer(
        Cpu::with_threads(2),
        &toy,
        &MlpConfig::default(),
        &train,
        seed,
    );
    for _ in 0..steps {
        exp.step().unwrap();
    }
    exp
}

/// Every tensor and metadata entry of the run's checkpoint, in a comparable form.
fn snapshot(exp: &Trainer<Cpu, ToyTask<Cpu>>) -> Vec<(String, String)> {
    let ck = exp.checkpoint().unwrap();
    let mut out: Vec<(String, String)> = ck
        .iter()
        .map(|(name, t)| (name.to_string(), format!("{:?}", t.data())))
        .collect();
    out.extend(ck.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[test]
fn identical_seeds_give_identical_runs_and_different_seeds_do_not() {
    for algo in Algo::ALL {
        assert!(
            snapshot(&run(algo, 45, 9)) == snapshot(&run(algo, 45, 9)),
            "{algo:?}: same seed, different runs"
        );
        assert!(
            snapshot(&run(algo, 45, 9)) != snapshot(&run(algo, 45, 10)),
            "{algo:?}: different seeds, same run"
        );
    }
}

#[test]
fn a_resumed_run_continues_exactly_like_the_uninterrupted_one() {
    for algo in [Algo::Em, Algo::Reinforce, Algo::Topk, Algo::Uniform] {
        let full = run(algo, 70, 4);
        let half = run(algo, 33, 4);
        let bytes = half.checkpoint().unwrap().to_bytes().unwrap();
        let saved = Checkpoint::from_bytes(&bytes, "resume-test.safetensors").unwrap();
        let toy = ToyConfig {
            train: 512,
            test: 128,
            ..ToyConfig::default()
        };
        let train = ToyTrainConfig {
            algo,
            steps: 70,
            batch_size: 32,
            ..ToyTrainConfig::default()
        };
        let mut resumed =
            ToyTask::trainer(Cpu::with_threads(2), &toy, &MlpConfig::default(), &train, 4);
        resumed.restore(&saved).unwrap();
        assert_eq!(resumed.step, 33);
        while resumed.step < 70 {
            resumed.step().unwrap();
        }
        assert!(
            snapshot(&resumed) == snapshot(&full),
            "{algo:?}: the resumed run diverged from the uninterrupted one"
        );
    }
}

#[test]
fn restoring_another_algorithms_checkpoint_is_rejected() {
    let em = run(Algo::Em, 3, 1);
    let ck = Checkpoint::from_bytes(
        &em.checkpoint().unwrap().to_bytes().unwrap(),
        "em.safetensors",
    )
    .unwrap();
    let mut other = run(Algo::Reinforce, 0, 1);
    let err = other.restore(&ck).unwrap_err().to_string();
    assert!(
        err.contains("em.safetensors") && err.contains("reinforce"),
        "{err}"
    );
}
