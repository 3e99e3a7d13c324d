//! The memory floor of a layer step: how long the step would take if it did nothing but move
//! its weights between memory and the cores.
//!
//! A modular layer with few rows per module uses each weight for only a few multiply-adds, so
//! its step can be bound by how fast the weights stream rather than by the FMA units. Its
//! forward reads every module's weights once, the input gradient (`dY W^T`) reads them again,
//! and the weight gradient writes a buffer of the same size: [`MemoryFloor::step`] does exactly
//! that traffic (two reads and one write of the weights' size, split over the same number of
//! threads, vectorised) with no arithmetic worth the name. Timed in the same rounds as the
//! layer, `floor_s / modular_s` says how close the layer runs to that bound, and
//! `peer_dense_s / floor_s` is the highest efficiency against the peer any memory-bound step
//! could reach.

use std::hint::black_box;

/// Floats summed per iteration of the read loop: four 16-lane accumulators, so the adds
/// neither serialise on one register's latency nor stop the loads from streaming.
const LANES: usize = 64;

/// Two reads and one write of `len` floats, split over `threads` threads.
pub struct MemoryFloor {
    weights: Vec<f32>,
    grads: Vec<f32>,
    threads: usize,
}

impl MemoryFloor {
    /// Buffers of `len` floats (the layer's weight count), to be streamed by `threads`
    /// threads (at least one).
    pub fn new(len: usize, threads: usize) -> MemoryFloor {
        MemoryFloor {
            weights: crate::bench_data(len, 11),
            grads: vec![0.0; len],
            threads: threads.max(1),
        }
    }

    /// One step's traffic: each thread reads its share of the weights twice and writes its
    /// share of the gradient once; the calling thread takes the first share.
    pub fn step(&mut self) {
        let share = self.weights.len().div_ceil(self.threads).max(1);
        let parts = self.weights.chunks(share).zip(self.grads.chunks_mut(share));
        std::thread::scope(|scope| {
            let mut parts = parts.collect::<Vec<_>>().into_iter();
            let first = parts.next();
            for (w, g) in parts {
                scope.spawn(move || stream(w, g));
            }
            if let Some((w, g)) = first {
                stream(w, g);
            }
        });
    }
}

/// Reads `w` twice (as the forward and the input gradient do) and overwrites `g` (as the
/// weight gradient does), returning nothing the optimiser could drop.
fn stream(w: &[f32], g: &mut [f32]) {
    for _ in 0..2 {
        black_box(sum(black_box(w)));
    }
    g.fill(black_box(0.5));
    black_box(g);
}

/// The sum of `w` in [`LANES`] independent partial sums (so it vectorises without reordering
/// any single float addition chain).
fn sum(w: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = w.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_matches_a_plain_sum_for_any_length() {
        for len in [0, 1, 63, 64, 65, 1000] {
            let w: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let plain: f32 = w.iter().sum();
            assert_eq!(sum(&w), plain, "length {len}");
        }
    }

    #[test]
    fn step_writes_every_gradient_element() {
        for threads in [1, 2, 3] {
            let mut floor = MemoryFloor::new(1001, threads);
            floor.step();
            assert!(floor.grads.iter().all(|&g| g == 0.5), "{threads} threads");
        }
    }
}
