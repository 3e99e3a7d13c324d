//! The cost of one EM E-step (S = 10 candidates scored in one routed pass) relative to one
//! M-step (forward, backward and Adam update), on the same mini-batch and model.
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
use modula_em::models::{MlpConfig, MlpInput, ModularMlp};
use modula_em::{Algo, AssignmentTable, Batch, EStepSettings, Group, Target, TrainSettings};
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
    let settings = TrainSettings {
        algo: Algo::Em,
        lr: 1e-4,
        grad_clip: 0.0,
        estep: EStepSettings::paths(SAMPLES),
        e_every: 10,
        ctrl_weight: 1.0,
        ctrl_mask: false,
        reinforce_decay: 0.9,
    };
    let mut m_step = Em::new(table, &settings);
    group.bench_function(BenchmarkId::new("m_step", &label), |bench| {
        bench.iter(|| {
            let mut grads = Grads::new();
            let s = StepContext {
                model: &net,
                backend: &cpu,
                params: &params,
                grads: &mut grads,
                rng: &mut rng,
                ctx: &mut Ctx::eval(),
            };
            let stats = Algorithm::<Cpu, ModularMlp>::gradient(&mut m_step, s, &batch)
                .expect("M-step")
                .stats;
            adam.step(&cpu, &mut params, &grads);
            black_box(stats);
        });
    });
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    em(&mut criterion);
    criterion.final_summary();
}
