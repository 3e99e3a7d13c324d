//! The cost of one EM E-step relative to one M-step (forward, backward and Adam update), on
//! the same mini-batch and model: a modular MLP with S = 10 candidates scored in one routed
//! pass, and the Penn Treebank language model (vocabulary 10,000, embedding and hidden 256,
//! M = 5, K = 1, one window of 35 steps over 32 streams) with the whole-path E-step (S = 10)
//! and the per-step E-step (all 5 modules at every step).
//!
//! Benchmark ids are `em/{e_step,m_step}/{config}`; `cargo xtask bench em` writes
//! `target/bench/em.json` with `ratio = e_step_s / m_step_s`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use modula_benches::bench_data;
use modula_cpu::Cpu;
use modula_em::algo::em::Em;
use modula_em::algo::{Algorithm, StepContext};
use modula_em::estep::e_step;
use modula_em::models::{
    LanguageModel, LmModelConfig, LmWindow, MlpConfig, MlpInput, ModularMlp, Recurrent,
};
use modula_em::{
    Algo, AssignmentTable, Batch, EStepSettings, Group, Model, Search, Target, TrainSettings,
};
use modula_nn::{Adam, Ctx, Grads, Optimizer, ParamStore};
use modula_tensor::Backend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Batch size, input width, classes, and the model: two modular layers of 16 modules, K = 2.
const N: usize = 256;
const D: usize = 256;
const CLASSES: usize = 10;
const SAMPLES: usize = 10;

fn em(c: &mut Criterion) {
    let cpu = Cpu::new();
    let model = MlpConfig {
        modules: 16,
        k: 2,
        layers: 2,
        hidden: D,
        variance: 1.0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut params = ParamStore::new();
    let net = ModularMlp::new(
        &cpu,
        &mut params,
        D,
        CLASSES,
        &model,
        Algo::Em,
        Default::default(),
        0.0,
        &mut rng,
    );
    let targets: Vec<u32> = (0..N as u32).map(|i| i % CLASSES as u32).collect();
    let idx: Vec<u32> = (0..N as u32).collect();
    let batch = Batch {
        input: MlpInput {
            x: cpu.upload([N, D], &bench_data(N * D, 1)),
            target: Target::Classes(targets),
        },
        groups: (0..model.layers)
            .map(|layer| Group {
                layer,
                keys: idx.clone(),
            })
            .collect(),
        examples: N,
        units: N,
    };
    let shapes = net.layer_shapes();
    let table = AssignmentTable::random(N, &shapes, &mut rng);
    let label = format!(
        "n{N}_d{D}_m{}_k{}_layers{}_s{SAMPLES}",
        model.modules, model.k, model.layers
    );

    let mut group = c.benchmark_group("em");
    group.bench_function(BenchmarkId::new("e_step", &label), |bench| {
        bench.iter(|| {
            // The table is restored each time so every iteration starts from the same state.
            let mut t = table.clone();
            let stats = e_step(
                &net,
                &cpu,
                &params,
                &batch,
                &mut t,
                &EStepSettings::paths(SAMPLES),
                &mut rng,
                &mut Ctx::eval(),
            )
            .expect("E-step");
            black_box(stats);
        });
    });
    let mut adam = Adam::new(1e-4);
    let mut m_step = Em::new(table, &settings(EStepSettings::paths(SAMPLES)));
    group.bench_function(BenchmarkId::new("m_step", &label), |bench| {
        bench.iter(|| {
            black_box(m_step_once(
                &cpu,
                &net,
                &mut params,
                &batch,
                &mut m_step,
                &mut adam,
                &mut rng,
            ))
        });
    });
    group.finish();
}

/// EM's settings with the E-step `estep` (the rest as the PTB runs use them).
fn settings(estep: EStepSettings) -> TrainSettings {
    TrainSettings {
        algo: Algo::Em,
        lr: 1e-4,
        grad_clip: 0.0,
        estep,
        e_every: 1,
        ctrl_weight: 1.0,
        ctrl_mask: false,
        reinforce_decay: 0.9,
        divergence_factor: modula_em::DEFAULT_DIVERGENCE_FACTOR,
    }
}

/// One M-step: EM's gradient on the stored assignments, then Adam.
fn m_step_once<M: Model<Cpu>>(
    cpu: &Cpu,
    net: &M,
    params: &mut ParamStore<Cpu>,
    batch: &Batch<M::Input>,
    em: &mut Em,
    adam: &mut Adam<Cpu>,
    rng: &mut ChaCha8Rng,
) -> modula_em::StepStats {
    let mut grads = Grads::new();
    let s = StepContext {
        model: net,
        backend: cpu,
        params,
        grads: &mut grads,
        rng,
        ctx: &mut Ctx::train(0),
        replicas: None,
    };
    let stats = Algorithm::<Cpu, M>::gradient(em, s, batch)
        .expect("M-step")
        .stats;
    adam.step(cpu, params, &grads);
    stats
}

/// The language model's E-steps, whole-path and per-step, against its M-step on one window.
fn lm(c: &mut Criterion) {
    let cpu = Cpu::new();
    let (vocab, steps, streams) = (10_000usize, 35usize, 32usize);
    let cfg = LmModelConfig {
        modules: 5,
        k: 1,
        ..LmModelConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut params = ParamStore::new();
    let recurrent = Recurrent::Modular { modules: 5, k: 1 };
    let net = LanguageModel::new(&cpu, &mut params, &cfg, recurrent, vocab, &mut rng);
    let words = |seed: u32| -> Vec<u32> {
        bench_data(steps * streams, seed)
            .iter()
            .map(|v| ((v + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32)
            .collect()
    };
    let ids: Vec<Vec<u32>> = words(2).chunks(streams).map(<[u32]>::to_vec).collect();
    let batch = Batch {
        input: LmWindow {
            ids,
            targets: words(3),
            h0: cpu.zeros([streams, cfg.hidden]),
        },
        groups: (0..steps)
            .map(|t| Group {
                layer: 0,
                keys: (t * streams..(t + 1) * streams).map(|k| k as u32).collect(),
            })
            .collect(),
        examples: streams,
        units: steps * streams,
    };
    let table = AssignmentTable::random(steps * streams, &[(5, 1)], &mut rng);
    let mut group = c.benchmark_group("em");
    let per_step = EStepSettings {
        search: Search::Step,
        ..EStepSettings::paths(5)
    };
    for (label, estep) in [
        ("lm_m5k1_path_s10", EStepSettings::paths(10)),
        ("lm_m5k1_step_s5", per_step),
    ] {
        group.bench_function(BenchmarkId::new("e_step", label), |bench| {
            bench.iter(|| {
                let mut t = table.clone();
                let stats = e_step(
                    &net,
                    &cpu,
                    &params,
                    &batch,
                    &mut t,
                    &estep,
                    &mut rng,
                    &mut Ctx::eval(),
                )
                .expect("E-step");
                black_box(stats);
            });
        });
        let mut adam = Adam::new(1e-4);
        let mut em = Em::new(table.clone(), &settings(estep));
        group.bench_function(BenchmarkId::new("m_step", label), |bench| {
            bench.iter(|| {
                black_box(m_step_once(
                    &cpu,
                    &net,
                    &mut params,
                    &batch,
                    &mut em,
                    &mut adam,
                    &mut rng,
                ))
            });
        });
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    em(&mut criterion);
    lm(&mut criterion);
    criterion.final_summary();
}
