//! The communicator abstraction: the few collectives distributed training needs, with a
//! single-process implementation that every build has.

use crate::DistError;

/// Plain data that travels between ranks as bytes: `f32` rows and `u32` counts.
///
/// Any [`bytemuck::Pod`] type qualifies; the MPI implementation sends its bytes, so a type
/// needs no MPI datatype of its own.
pub trait Wire: bytemuck::Pod {}

impl<T: bytemuck::Pod> Wire for T {}

/// A group of `size()` cooperating processes (ranks), numbered `0..size()`.
///
/// Every collective must be called by every rank of the group, in the same order, with
/// arguments that agree (the counts one rank sends are the counts its peers receive);
/// otherwise MPI deadlocks or fails. The implementations check what one rank can check on its
/// own (lengths against counts, counts against the group size) and return
/// [`DistError::Counts`] before communicating.
pub trait Comm {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Returns once every rank has called it.
    ///
    /// # Errors
    /// A failure of the transport.
    fn barrier(&self) -> Result<(), DistError>;

    /// Element-wise sum of `data` over all ranks, written back into `data` on every rank.
    ///
    /// # Errors
    /// If `data` is too long for one MPI call, or the transport fails.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError>;

    /// All-to-all with varying counts (MPI_Alltoallv): `send` holds `send_counts[q]` elements
    /// for each rank `q` in rank order, and the result holds `recv_counts[s]` elements from
    /// each rank `s` in rank order.
    ///
    /// # Errors
    /// [`DistError::Counts`] if the counts do not have one entry per rank, `send` is not
    /// their total long, or a count does not fit MPI's `int`; or a transport failure.
    fn all_to_all_v<T: Wire>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<T>, DistError>;

    /// Copies `data` of rank `root` into `data` on every rank (all ranks pass the same
    /// length).
    ///
    /// # Errors
    /// [`DistError::Counts`] if `root` is not a rank; or a transport failure.
    fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) -> Result<(), DistError>;
}

/// Implements [`Comm`] for a pointer type by forwarding every call to the communicator it
/// points to.
macro_rules! forward_comm {
    ($(#[$doc:meta])* $ty:ty) => {
        $(#[$doc])*
        impl<C: Comm> Comm for $ty {
            fn rank(&self) -> usize {
                (**self).rank()
            }

            fn size(&self) -> usize {
                (**self).size()
            }

            fn barrier(&self) -> Result<(), DistError> {
                (**self).barrier()
            }

            fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
                (**self).all_reduce_sum(data)
            }

            fn all_to_all_v<T: Wire>(
                &self,
                send: &[T],
                send_counts: &[usize],
                recv_counts: &[usize],
            ) -> Result<Vec<T>, DistError> {
                (**self).all_to_all_v(send, send_counts, recv_counts)
            }

            fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) -> Result<(), DistError> {
                (**self).broadcast(data, root)
            }
        }
    };
}

forward_comm!(
    /// A borrowed communicator is one, so wrappers such as [`crate::TimedComm`] can borrow it.
    &C
);
forward_comm!(
    /// A shared communicator is one, so that several users (the trainers of a test) can hold
    /// the same group.
    std::rc::Rc<C>
);

/// Checks the arguments of [`Comm::all_to_all_v`] on one rank and returns the number of
/// elements it receives.
///
/// # Errors
/// [`DistError::Counts`] naming what disagrees.
pub(crate) fn check_all_to_all(
    size: usize,
    send_len: usize,
    send_counts: &[usize],
    recv_counts: &[usize],
) -> Result<usize, DistError> {
    if send_counts.len() != size || recv_counts.len() != size {
        return Err(DistError::Counts(format!(
            "all-to-all over {size} ranks got {} send counts and {} receive counts; \
             pass one count per rank",
            send_counts.len(),
            recv_counts.len()
        )));
    }
    let total: usize = send_counts.iter().sum();
    if total != send_len {
        return Err(DistError::Counts(format!(
            "all-to-all send buffer holds {send_len} elements but the send counts add up to \
             {total}"
        )));
    }
    Ok(recv_counts.iter().sum())
}

/// Checks that `root` names a rank of a group of `size`.
///
/// # Errors
/// [`DistError::Counts`] if it does not.
pub(crate) fn check_root(size: usize, root: usize) -> Result<(), DistError> {
    if root < size {
        Ok(())
    } else {
        Err(DistError::Counts(format!(
            "broadcast root {root} is not a rank of a group of {size}"
        )))
    }
}

/// The group of one process: rank 0 of size 1. Collectives are copies, so the distributed
/// code paths run (and are tested) unchanged without MPI.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalComm;

impl Comm for LocalComm {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }

    fn all_reduce_sum(&self, _data: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_to_all_v<T: Wire>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<T>, DistError> {
        let received = check_all_to_all(1, send.len(), send_counts, recv_counts)?;
        if received != send.len() {
            return Err(DistError::Counts(format!(
                "a single rank sends {} elements to itself but expects to receive {received}",
                send.len()
            )));
        }
        Ok(send.to_vec())
    }

    fn broadcast<T: Wire>(&self, _data: &mut [T], root: usize) -> Result<(), DistError> {
        check_root(1, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_all_to_all_returns_what_it_sends() {
        let got = LocalComm
            .all_to_all_v(&[1.0f32, 2.0, 3.0], &[3], &[3])
            .unwrap();
        assert_eq!(got, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn mismatched_counts_are_errors_not_panics() {
        let short = LocalComm.all_to_all_v(&[1u32, 2], &[3], &[3]);
        assert!(matches!(short, Err(DistError::Counts(m)) if m.contains("add up to 3")));
        let ranks = LocalComm.all_to_all_v(&[1u32], &[1, 0], &[1]);
        assert!(matches!(ranks, Err(DistError::Counts(m)) if m.contains("one count per rank")));
        let asym = LocalComm.all_to_all_v(&[1u32], &[1], &[2]);
        assert!(matches!(asym, Err(DistError::Counts(_))));
        assert!(LocalComm.broadcast(&mut [0u32], 1).is_err());
    }
}
