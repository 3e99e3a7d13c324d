//! The wall-clock of a converted network's forward against the dense forward it came from
//! (docs/experiments/modularity.md): the ReLU network 784 - 1024 - 1024 - 10 of the
//! modularity experiment, dense (every product dense, as `Dispatch::Dense`), and as the
//! network of neuron groups `modula convert` writes (32 groups per hidden layer, `K` of them
//! computed per image, chosen greedily by the distinct controller) for K in {3, 8, 16, 32}, on
//! a test-sized batch of 256 images, on one and on two threads.
//!
//! Benchmark ids are `groups/{dense,k3,k8,k16,k32}/t{threads}`; `cargo xtask bench groups`
//! writes `target/bench/groups.json` with each forward's seconds. The weights are random: the
//! cost of a forward does not depend on their values (the products are dense, and the groups
//! computed are `K` whichever they are).

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use modula_benches::bench_data;
use modula_cpu::Cpu;
use modula_em::models::{FeedForward, GroupNet, ReluMlp};
use modula_em::{Algo, Target};
use modula_modular::ControllerOutput;
use modula_nn::{Ctx, Dispatch, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Images per batch, input width, hidden widths, classes and groups per hidden layer.
const N: usize = 256;
const D: usize = 784;
const HIDDEN: [usize; 2] = [1024, 1024];
const CLASSES: usize = 10;
const GROUPS: usize = 32;

/// Times `net`'s forward pass (evaluation mode, greedy routes) on `x` as `id`.
fn time_forward<N: FeedForward<Cpu>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    cpu: &Cpu,
    net: &N,
    params: &ParamStore<Cpu>,
    x: &<Cpu as Backend>::Tensor,
    id: BenchmarkId,
) {
    let target = Target::Classes((0..N as u32).map(|i| i % CLASSES as u32).collect());
    group.bench_function(id, |bench| {
        bench.iter(|| {
            let mut greedy = |_: usize, out: &ControllerOutput<Cpu>| -> Result<_, BackendError> {
                out.greedy(cpu)
            };
            let out = net
                .forward_tensors(
                    cpu,
                    params,
                    x,
                    &target,
                    &mut greedy,
                    false,
                    false,
                    &mut Ctx::eval(),
                )
                .expect("forward");
            black_box(out.prediction);
        });
    });
}

fn groups(c: &mut Criterion) {
    let mut group = c.benchmark_group("groups");
    for threads in [1, 2] {
        let cpu = Cpu::with_threads(threads);
        let x = cpu.upload([N, D], &bench_data(N * D, 3));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut params = ParamStore::new();
        let dense = ReluMlp::new(
            &cpu,
            &mut params,
            D,
            &HIDDEN,
            CLASSES,
            Dispatch::Dense,
            (0.0, 0.0),
            &mut rng,
        );
        let id = BenchmarkId::new("dense", format!("t{threads}"));
        time_forward(&mut group, &cpu, &dense, &params, &x, id);
        for k in [3, 8, 16, 32] {
            let mut params = ParamStore::new();
            let net = GroupNet::new(
                &cpu,
                &mut params,
                D,
                &HIDDEN,
                CLASSES,
                (GROUPS, k),
                Algo::Em,
                0.0,
                &mut rng,
            );
            let id = BenchmarkId::new(format!("k{k}"), format!("t{threads}"));
            time_forward(&mut group, &cpu, &net, &params, &x, id);
        }
    }
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let mut criterion = Criterion::default().configure_from_args();
    groups(&mut criterion);
    criterion.final_summary();
}
