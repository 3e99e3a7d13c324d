//! [`Comm`] over MPI's world communicator (rsmpi; OpenMPI on Debian).
//!
//! MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) aborts the whole job on a transport
//! failure, so the errors returned here are the ones this rank detects before calling MPI.
//!
//! MPI's collectives have no timeout: a rank that hangs (a deadlock, an endless loop, a
//! stopped process) leaves every other rank waiting inside its next collective for ever, and
//! `mpirun` sees no process exit. So, unless turned off, every collective starts with an
//! arrival check of small point-to-point messages that can be polled against a deadline:
//! each rank tells rank 0 the number of the collective it has reached, and rank 0, once all
//! have arrived with the same number, tells them to go on. A rank that does not arrive in
//! time is named by rank 0, which then aborts the job (`MPI_Abort`); a rank that arrived
//! with another number (the ranks call collectives in different orders) is named at once.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{LocalScope, Request};
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
    /// How long a rank may wait for the others to reach a collective; `None` turns the
    /// arrival check off.
    timeout: Option<Duration>,
    /// How many collectives this rank has entered.
    entered: Cell<u64>,
}

/// How long one rank may wait for the others to reach a collective before the job is ended,
/// unless [`MpiComm::with_timeout`] says otherwise: long enough for a rank that evaluates or
/// writes a checkpoint while the others wait, short enough that a hung job ends within a
/// minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(50);

/// The exit code `MPI_Abort` gives the job when a rank did not arrive.
const HUNG_EXIT: i32 = 75;
/// Point-to-point tags of the arrival check (collectives do not match tags, so these cannot
/// be confused with them).
const TAG_ARRIVE: i32 = 0x6d6f;
const TAG_GO: i32 = 0x6d70;

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

impl MpiComm {
    /// Initializes MPI (single-threaded) and returns the world communicator, with the
    /// arrival check at [`DEFAULT_TIMEOUT`].
    ///
    /// It also makes a panic end the process (exit code 101, after the panic's message)
    /// instead of unwinding into MPI's finalization, which would wait for the other ranks
    /// while they wait for this one; `mpirun` then ends the job and names the rank.
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
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(101);
        }));
        Ok(MpiComm {
            world: universe.world(),
            _universe: universe,
            timeout: Some(DEFAULT_TIMEOUT),
            entered: Cell::new(0),
        })
    }

    /// Sets how long a rank may wait for the others to reach a collective (`None`: no
    /// arrival check, so a hung rank hangs the job; the benches use it to time the
    /// collectives alone). Every rank must pass the same setting.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The arrival check before collective `what` (see the module's documentation). Ends the
    /// job through `MPI_Abort` when a rank does not arrive within the timeout or arrives at
    /// another collective.
    fn arrive(&self, what: &str) {
        let Some(timeout) = self.timeout else { return };
        let seq = self.entered.get();
        self.entered.set(seq + 1);
        let (rank, size) = (self.rank(), self.size());
        if size == 1 {
            return;
        }
        if rank == 0 {
            let mut arrived = vec![0u64; size - 1];
            mpi::request::scope(|scope| {
                let pending = arrived
                    .iter_mut()
                    .enumerate()
                    .map(|(i, slot)| {
                        let from = self.world.process_at_rank(i as i32 + 1);
                        (
                            i + 1,
                            from.immediate_receive_into_with_tag(scope, slot, TAG_ARRIVE),
                        )
                    })
                    .collect();
                let late = poll(pending, Instant::now() + timeout);
                if !late.is_empty() {
                    eprintln!(
                        "modula-dist: rank 0 waited {}s for rank(s) {late:?} to reach collective #{seq} ({what}); they hung or stopped, so the job ends here",
                        timeout.as_secs_f32()
                    );
                    self.world.abort(HUNG_EXIT);
                }
            });
            if let Some((i, other)) = arrived.iter().enumerate().find(|(_, s)| **s != seq) {
                eprintln!(
                    "modula-dist: rank {} reached collective #{other} while rank 0 reached #{seq} ({what}): the ranks call collectives in different orders; the job ends here",
                    i + 1
                );
                self.world.abort(HUNG_EXIT);
            }
            for q in 1..size {
                self.world
                    .process_at_rank(q as i32)
                    .send_with_tag(&seq, TAG_GO);
            }
        } else {
            let mut go = 0u64;
            // Rank 0 knows which rank is missing and reports it first; this rank waits a
            // little longer so that its own, vaguer report only comes when rank 0 is the one
            // that hung.
            let patience = timeout + timeout / 5;
            mpi::request::scope(|scope| {
                let lead = self.world.process_at_rank(0);
                let pending = vec![
                    (0, lead.immediate_send_with_tag(scope, &seq, TAG_ARRIVE)),
                    (
                        0,
                        lead.immediate_receive_into_with_tag(scope, &mut go, TAG_GO),
                    ),
                ];
                if !poll(pending, Instant::now() + patience).is_empty() {
                    eprintln!(
                        "modula-dist: rank {rank} waited {}s for rank 0 to release collective #{seq} ({what}); rank 0 hung or stopped, so the job ends here",
                        patience.as_secs_f32()
                    );
                    self.world.abort(HUNG_EXIT);
                }
            });
        }
    }
}

/// Polls `requests` (each with the rank it waits on) until all have completed or `deadline`
/// has passed; returns the ranks still pending, in order. It yields the core between polls
/// (ranks may share cores) and sleeps a millisecond between them once the wait is long.
fn poll<'a>(
    mut requests: Vec<(usize, Request<'a, u64, &LocalScope<'a>>)>,
    deadline: Instant,
) -> Vec<usize> {
    let start = Instant::now();
    loop {
        requests = requests
            .into_iter()
            .filter_map(|(q, r)| r.test().err().map(|r| (q, r)))
            .collect();
        if requests.is_empty() {
            return Vec::new();
        }
        if Instant::now() > deadline {
            let mut late: Vec<usize> = requests.iter().map(|(q, _)| *q).collect();
            late.dedup();
            // The job is about to be aborted; forgetting the requests keeps the scope from
            // panicking over them first.
            std::mem::forget(requests);
            return late;
        }
        if start.elapsed() < Duration::from_millis(10) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
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
        self.arrive("barrier");
        self.world.barrier();
        Ok(())
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        count(data.len() * 4, "an allreduce buffer")?;
        self.arrive("allreduce");
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
        self.arrive("all-to-all-v");
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
        self.arrive("broadcast");
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(bytemuck::cast_slice_mut::<T, u8>(data));
        Ok(())
    }
}
