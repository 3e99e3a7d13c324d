//! Times one expert-parallel step (forward and backward of a modular linear layer with
//! `d_in = d_out = 512`) on every rank of an MPI job, split into the time spent in
//! collectives and the rest, for `cargo xtask bench dist`:
//!
//! ```sh
//! mpirun -np 2 target/release/examples/dist_step
//! ```
//!
//! For each (n, M, K) of the modular bench's issue configurations, the global batch of `n`
//! rows is split over the ranks; each rank runs one thread. Rank 0 prints one JSON object per
//! configuration: the slowest rank's median `compute_s` and `exchange_s` (which includes waiting
//! for slower ranks) and the bytes all ranks together sent to other ranks in one step.

use std::time::Instant;

use modula_cpu::Cpu;
use modula_dist::{Comm, ExpertLinear, MpiComm, TimedComm, shard_range};
use modula_modular::{ModularLinear, Routing, Selection};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Width of the layer, as in the modular bench.
const D: usize = 512;

/// The issue's (n, M, K) configurations of the modular bench.
const CONFIGS: [(usize, usize, usize); 4] =
    [(4096, 16, 2), (512, 16, 2), (128, 16, 2), (1024, 64, 1)];

/// Timed steps per configuration, after one untimed warm-up step.
const REPS: usize = 7;

/// `n` values uniform in `[-1, 1)` from `seed`.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// A uniformly random selection with distinct slots per row (as the modular bench draws).
fn picks(n: usize, m: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * k);
    for _ in 0..n {
        let start = out.len();
        while out.len() < start + k {
            let c = rng.random_range(0..m as u32);
            if !out[start..].contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without the arrival check, so that the exchange time is the collectives' own.
    let comm = TimedComm::new(MpiComm::init()?.with_timeout(None));
    let (rank, ranks) = (comm.rank(), comm.size());
    let b = Cpu::with_threads(1);
    for (n, m, k) in CONFIGS {
        let mut full_params = ParamStore::new();
        let full = ModularLinear::new(
            &b,
            &mut full_params,
            "layer",
            m,
            D,
            D,
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        let mut params = ParamStore::new();
        let layer = ExpertLinear::shard(&b, &comm, &mut params, "layer", &full, &full_params)?;
        drop(full_params);
        let mine = shard_range(n, rank, ranks);
        let sel = picks(n, m, k, 2);
        let selection = Selection::new(k, sel[mine.start * k..mine.end * k].to_vec());
        let x = b.upload([mine.len(), D], &data(mine.len() * D, 3 + rank as u64));
        let dy = b.upload([mine.len(), D], &data(mine.len() * D, 100 + rank as u64));
        let mut grads = Grads::new();
        let (mut compute, mut exchange, mut bytes) = (Vec::new(), Vec::new(), 0u64);
        for rep in 0..=REPS {
            comm.barrier()?;
            comm.take();
            let start = Instant::now();
            let routing = Routing::new(&selection, m);
            let (y, cache) = layer.forward(&b, &comm, &params, &x, &routing, None)?;
            grads.reset();
            let (dx, _) = layer.backward(&b, &comm, &params, cache, &dy, &mut grads)?;
            b.synchronize()?;
            let total = start.elapsed();
            let traffic = comm.take();
            std::hint::black_box((y, dx));
            if rep > 0 {
                compute.push(total.saturating_sub(traffic.time).as_secs_f64());
                exchange.push(traffic.time.as_secs_f64());
                bytes = traffic.bytes;
            }
        }
        // Every rank's medians and bytes, gathered on rank 0 by an all-to-all that only
        // rank 0 receives from.
        let stats = [median(compute), median(exchange), bytes as f64];
        let to_root: Vec<usize> = (0..ranks).map(|q| if q == 0 { 3 } else { 0 }).collect();
        let from_all = vec![if rank == 0 { 3 } else { 0 }; ranks];
        let all = comm.all_to_all_v(&stats, &to_root, &from_all)?;
        comm.take();
        if rank == 0 {
            let slowest = (0..ranks)
                .max_by(|&a, &b| {
                    let t = |r: usize| all[3 * r] + all[3 * r + 1];
                    t(a).total_cmp(&t(b))
                })
                .unwrap_or(0);
            let bytes: f64 = (0..ranks).map(|r| all[3 * r + 2]).sum();
            println!(
                "{{\"n\": {n}, \"m\": {m}, \"k\": {k}, \"d\": {D}, \"ranks\": {ranks}, \
                 \"compute_s\": {:e}, \"exchange_s\": {:e}, \"bytes\": {bytes}, \"reps\": {REPS}}}",
                all[3 * slowest],
                all[3 * slowest + 1],
            );
        }
    }
    Ok(())
}
