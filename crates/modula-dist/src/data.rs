//! Data parallelism: each rank holds a replica of the parameters and a shard of every batch;
//! gradients are summed across ranks in buckets before the optimizer step.

use std::ops::Range;

use modula_nn::{Grads, ParamId, ParamStore};
use modula_tensor::{Backend, Shape};

use crate::DistError;
use crate::comm::Comm;

/// The examples `0..n` that rank `rank` of `ranks` owns: contiguous blocks, the first
/// `n mod ranks` ranks taking one more. Used both for a batch's rows and for the EM
/// assignment table (each rank owns the assignments of its examples).
pub fn shard_range(n: usize, rank: usize, ranks: usize) -> Range<usize> {
    let (base, extra) = (n / ranks, n % ranks);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Replaces the gradient of every parameter in `replicated` by the sum over ranks of `scale`
/// times it, so that after the call every rank holds the same gradients for them.
///
/// `replicated` lists the parameters every rank holds a copy of, in the same order on every
/// rank (for example all of `params.ids()` in a purely data-parallel model). The shards of an
/// expert-parallel layer must not be listed: their gradients are already complete on their
/// owner, and their shapes differ between ranks.
///
/// `scale` is this rank's weight in the global loss: with per-rank losses that are means over
/// the rank's `n_r` rows of a global batch of `N`, pass `n_r / N`, and the sum is the gradient
/// of the global mean. Gradients are packed into buckets of up to `bucket` values (at least one
/// parameter each) and each bucket is one allreduce; a parameter without a gradient on any
/// rank stays without one, and one with a gradient on some ranks only counts zeros elsewhere.
///
/// # Errors
/// [`DistError::Counts`] if `bucket` is 0; communication and device errors.
pub fn all_reduce_grads<B: Backend>(
    b: &B,
    comm: &impl Comm,
    replicated: &[ParamId],
    params: &ParamStore<B>,
    grads: &mut Grads<B>,
    scale: f32,
    bucket: usize,
) -> Result<(), DistError> {
    if bucket == 0 {
        return Err(DistError::Counts(
            "gradient buckets must hold at least one value".into(),
        ));
    }
    // Which parameters have a gradient anywhere: one small allreduce, so that all ranks pack
    // the same buckets.
    let mut present: Vec<f32> = replicated
        .iter()
        .map(|&id| f32::from(u8::from(grads.get(id).is_some())))
        .collect();
    comm.all_reduce_sum(&mut present)?;
    let live: Vec<_> = replicated
        .iter()
        .copied()
        .zip(present)
        .filter(|&(_, p)| p > 0.0)
        .map(|(id, _)| (id, b.shape(params.get(id))))
        .collect();
    let mut start = 0;
    while start < live.len() {
        // One bucket: parameters start..end, at least one, up to `bucket` values.
        let mut end = start;
        let mut values = Vec::new();
        while end < live.len() && (end == start || values.len() + numel(live[end].1) <= bucket) {
            let (id, shape) = live[end];
            match grads.get(id) {
                Some(g) => values.extend(b.download(g)?.iter().map(|v| v * scale)),
                None => values.resize(values.len() + numel(shape), 0.0),
            }
            end += 1;
        }
        comm.all_reduce_sum(&mut values)?;
        let mut at = 0;
        for &(id, shape) in &live[start..end] {
            let n = numel(shape);
            *grads.entry(b, id, shape) = b.upload(shape, &values[at..at + n]);
            at += n;
        }
        start = end;
    }
    Ok(())
}

/// Number of values in a tensor of `shape`.
fn numel(shape: Shape) -> usize {
    shape[0] * shape[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_example_once_in_order() {
        for n in 0..20 {
            for ranks in 1..6 {
                let ranges: Vec<_> = (0..ranks).map(|r| shard_range(n, r, ranks)).collect();
                let flat: Vec<usize> = ranges.iter().flat_map(Clone::clone).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "n {n} ranks {ranks}");
                let lens: Vec<_> = ranges.iter().map(ExactSizeIterator::len).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
