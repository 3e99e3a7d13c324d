//! The data-parallel trainer's view of a communicator: `modula_em::Replicas` over any
//! [`Comm`].

use std::ops::Range;

use modula_em::{Replicas, TrainError};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;

use crate::DistError;
use crate::comm::Comm;
use crate::data::{all_reduce_grads, shard_range};

/// Default gradient bucket: 4 Mi values (16 MiB of `f32`s) per allreduce, large enough that a
/// bucket's latency is small beside its transfer, small enough to bound the staging copy.
pub const DEFAULT_BUCKET: usize = 1 << 22;

/// A communicator as the ranks of a data-parallel [`modula_em::Trainer`]
/// ([`modula_em::Trainer::distribute`]): rank `r` owns the examples
/// [`shard_range`]`(n, r, P)`, gradients are summed by [`all_reduce_grads`] in buckets of
/// `bucket` values, and statistics are summed exactly alike on every rank.
#[derive(Debug)]
pub struct DataParallel<C> {
    comm: C,
    bucket: usize,
}

impl<C: Comm> DataParallel<C> {
    /// The ranks of `comm`, summing gradients in buckets of up to `bucket` values.
    ///
    /// # Errors
    /// [`DistError::Counts`] if `bucket` is 0.
    pub fn new(comm: C, bucket: usize) -> Result<Self, DistError> {
        if bucket == 0 {
            return Err(DistError::Counts(
                "gradient buckets must hold at least one value".into(),
            ));
        }
        Ok(DataParallel { comm, bucket })
    }

    /// The communicator.
    pub fn comm(&self) -> &C {
        &self.comm
    }
}

/// A [`DistError`] as the trainer reports it.
fn train_error(e: DistError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

impl<C: Comm + std::fmt::Debug, B: Backend> Replicas<B> for DataParallel<C> {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn ranks(&self) -> usize {
        self.comm.size()
    }

    fn owned(&self, examples: usize) -> Range<usize> {
        shard_range(examples, self.comm.rank(), self.comm.size())
    }

    fn sum_grads(
        &self,
        b: &B,
        params: &ParamStore<B>,
        grads: &mut Grads<B>,
        scale: f32,
    ) -> Result<(), TrainError> {
        let ids: Vec<_> = params.ids().collect();
        all_reduce_grads(b, &self.comm, &ids, params, grads, scale, self.bucket)
            .map_err(train_error)
    }

    fn sum(&self, values: &mut [f64]) -> Result<(), TrainError> {
        // Every rank receives every rank's values and adds them in rank order, so the sums
        // are the same bits everywhere (an MPI reduction promises no order).
        let p = self.comm.size();
        let n = values.len();
        let send = values.repeat(p);
        let all = self
            .comm
            .all_to_all_v(&send, &vec![n; p], &vec![n; p])
            .map_err(train_error)?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = (0..p).map(|r| all[r * n + i]).sum();
        }
        Ok(())
    }

    fn gather(&self, local: &[u16]) -> Result<Vec<u16>, TrainError> {
        let (p, root) = (self.comm.size(), self.comm.rank() == 0);
        let to_root = |n: usize| {
            let mut counts = vec![0; p];
            counts[0] = n;
            counts
        };
        let from_all = |n: usize| vec![if root { n } else { 0 }; p];
        let lens = self
            .comm
            .all_to_all_v(&[local.len() as u64], &to_root(1), &from_all(1))
            .map_err(train_error)?;
        let recv: Vec<usize> = if root {
            lens.iter().map(|&l| l as usize).collect()
        } else {
            vec![0; p]
        };
        self.comm
            .all_to_all_v(local, &to_root(local.len()), &recv)
            .map_err(train_error)
    }
}
