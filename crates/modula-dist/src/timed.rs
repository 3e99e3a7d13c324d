//! A [`Comm`] that measures its own collectives, for benchmarks and logs.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::DistError;
use crate::comm::{Comm, Wire};

/// Wraps a communicator and counts, since creation or the last [`TimedComm::take`], the time
/// spent in its collectives (including the wait for slower ranks), the collectives called,
/// and the bytes this rank's all-to-alls sent to other ranks (what crossed the network; the
/// block a rank keeps is not counted).
#[derive(Debug)]
pub struct TimedComm<C> {
    inner: C,
    time: Cell<Duration>,
    bytes: Cell<u64>,
    calls: Cell<u64>,
}

/// What a [`TimedComm`] counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    /// Time spent inside collectives.
    pub time: Duration,
    /// Bytes this rank's all-to-alls sent to other ranks.
    pub bytes: u64,
    /// Collectives called (every kind).
    pub calls: u64,
}

impl<C: Comm> TimedComm<C> {
    /// Starts counting from zero.
    pub fn new(inner: C) -> Self {
        TimedComm {
            inner,
            time: Cell::new(Duration::ZERO),
            bytes: Cell::new(0),
            calls: Cell::new(0),
        }
    }

    /// What was counted so far; the counters restart from zero.
    pub fn take(&self) -> Traffic {
        Traffic {
            time: self.time.take(),
            bytes: self.bytes.take(),
            calls: self.calls.take(),
        }
    }

    /// Runs the collective `f`, counting it and adding its duration to the collective time.
    fn timed<T>(&self, f: impl FnOnce(&C) -> T) -> T {
        self.calls.set(self.calls.get() + 1);
        let start = Instant::now();
        let out = f(&self.inner);
        self.time.set(self.time.get() + start.elapsed());
        out
    }
}

impl<C: Comm> Comm for TimedComm<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.timed(|c| c.barrier())
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.timed(|c| c.all_reduce_sum(data))
    }

    fn all_to_all_v<T: Wire>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<T>, DistError> {
        let out = self.timed(|c| c.all_to_all_v(send, send_counts, recv_counts))?;
        let remote: usize = send_counts
            .iter()
            .enumerate()
            .filter(|&(q, _)| q != self.rank())
            .map(|(_, &n)| n)
            .sum();
        self.bytes
            .set(self.bytes.get() + (remote * size_of::<T>()) as u64);
        Ok(out)
    }

    fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) -> Result<(), DistError> {
        self.timed(|c| c.broadcast(data, root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalComm;

    #[test]
    fn one_rank_sends_no_bytes_to_others() {
        let comm = TimedComm::new(LocalComm);
        comm.all_to_all_v(&[1.0f32; 6], &[6], &[6]).unwrap();
        let traffic = comm.take();
        assert_eq!((traffic.bytes, traffic.calls), (0, 1));
    }
}
