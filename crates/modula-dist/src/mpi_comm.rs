//! [`Comm`] over MPI's world communicator (rsmpi; OpenMPI on Debian).
//!
//! MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) aborts the whole job on a transport
//! failure, so the errors returned here are the ones this rank detects before calling MPI.

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::DistError;
use crate::comm::{Comm, Wire, check_all_to_all, check_root};

/// The MPI world: every process `mpirun` started. MPI is finalized when this is dropped, so
/// keep it alive for the whole run.
pub struct MpiComm {
    // Dropped after `world` (fields drop in order), which finalizes MPI.
    world: SimpleCommunicator,
    _universe: Universe,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

impl MpiComm {
    /// Initializes MPI (single-threaded) and returns the world communicator.
    ///
    /// # Errors
    /// [`DistError::Init`] if MPI was already initialized in this process.
    pub fn init() -> Result<Self, DistError> {
        let universe = mpi::initialize().ok_or_else(|| {
            DistError::Init(
                "MPI is already initialized in this process; create one MpiComm and share it"
                    .into(),
            )
        })?;
        Ok(MpiComm {
            world: universe.world(),
            _universe: universe,
        })
    }
}

/// A count or displacement as MPI's `int`.
fn count(n: usize, what: &str) -> Result<Count, DistError> {
    Count::try_from(n).map_err(|_| {
        DistError::Counts(format!(
            "{what} of {n} bytes exceeds MPI's int; send smaller buckets or fewer rows per step"
        ))
    })
}

/// Byte counts and displacements (exclusive prefix sums) for `counts` elements of `width`
/// bytes.
fn byte_partition(counts: &[usize], width: usize) -> Result<(Vec<Count>, Vec<Count>), DistError> {
    let mut bytes = Vec::with_capacity(counts.len());
    let mut displs = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &c in counts {
        displs.push(count(at, "an all-to-all displacement")?);
        bytes.push(count(c * width, "an all-to-all block")?);
        at += c * width;
    }
    Ok((bytes, displs))
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.world.barrier();
        Ok(())
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        count(data.len() * 4, "an allreduce buffer")?;
        // rsmpi has no MPI_IN_PLACE for allreduce; the copy is one pass over a bucket.
        let send = data.to_vec();
        self.world
            .all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }

    fn all_to_all_v<T: Wire>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv_counts: &[usize],
    ) -> Result<Vec<T>, DistError> {
        let received = check_all_to_all(self.size(), send.len(), send_counts, recv_counts)?;
        let width = size_of::<T>();
        let (send_bytes, send_displs) = byte_partition(send_counts, width)?;
        let (recv_bytes, recv_displs) = byte_partition(recv_counts, width)?;
        let mut out = vec![T::zeroed(); received];
        let send_buf = Partition::new(bytemuck::cast_slice::<T, u8>(send), send_bytes, send_displs);
        let mut recv_buf = PartitionMut::new(
            bytemuck::cast_slice_mut::<T, u8>(&mut out),
            recv_bytes,
            recv_displs,
        );
        self.world
            .all_to_all_varcount_into(&send_buf, &mut recv_buf);
        Ok(out)
    }

    fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) -> Result<(), DistError> {
        check_root(self.size(), root)?;
        count(size_of_val(data), "a broadcast buffer")?;
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(bytemuck::cast_slice_mut::<T, u8>(data));
        Ok(())
    }
}
