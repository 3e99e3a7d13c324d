//! [`Comm`] over MPI's world communicator (rsmpi; OpenMPI on Debian).
//!
//! MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) aborts the whole job on a transport
//! failure, so the errors returned here are the ones this rank detects before calling MPI.
//!
//! MPI's collectives have no timeout: a rank that hangs (a deadlock, an endless loop, a
//! stopped process) leaves every other rank waiting inside its next collective for ever, and
//! `mpirun` sees no process exit. So, unless turned off, every collective starts with an
//! arrival check of small point-to-point messages that can be polled against a deadline:
//! each rank tells rank 0 which collective it has reached (its number in the rank's sequence,
//! its kind, its length and root), and rank 0, once all have arrived at the same one, tells
//! them to go on. A rank that does not arrive in time is named by rank 0, which then aborts
//! the job (`MPI_Abort`); a rank that arrived at another collective (the ranks call
//! collectives in different orders, or with different lengths) is named at once.

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

/// The exit code `MPI_Abort` gives the job when a rank did not arrive or arrived elsewhere.
const HUNG_EXIT: i32 = 75;

/// Point-to-point tags of the arrival check (collectives do not match tags, so these cannot
/// be confused with them).
const TAG_ARRIVE: i32 = 0x6d6f;
const TAG_GO: i32 = 0x6d70;

/// The collectives, as the arrival check names them; the discriminant travels.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Barrier,
    AllReduce,
    AllToAllV,
    Broadcast,
}

/// The kinds' names, by discriminant.
const KIND_NAMES: [&str; 4] = ["barrier", "allreduce", "all-to-all-v", "broadcast"];

/// Which collective a rank has reached, as it travels: its number in the rank's sequence of
/// collectives, its kind, and the length (bytes) and root that every rank must pass alike (0
/// where a collective has none, or where ranks pass different ones, as all-to-all-v's counts).
type Arrival = [u64; 4];

/// An arrival as a message names it.
fn describe([seq, kind, len, root]: Arrival) -> String {
    let kind = KIND_NAMES.get(kind as usize).copied().unwrap_or("unknown");
    format!("collective #{seq} ({kind}, {len} bytes, root {root})")
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl MpiComm {
    /// Initializes MPI (single-threaded) and returns the world communicator, with the
    /// arrival check at [`DEFAULT_TIMEOUT`].
    ///
    /// It also installs a process-wide panic hook, for the rest of the process's life: a
    /// panic prints this rank's number and the panic's message and ends the process (exit
    /// code 101) instead of unwinding into MPI's finalization, which would wait for the other
    /// ranks while they wait for this one; `mpirun` then ends the job and names the rank.
    /// Panics caught by `catch_unwind` end the process too.
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
        let world = universe.world();
        let rank = world.rank();
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprintln!("modula-dist: rank {rank} panicked; ending its process");
            report(info);
            std::process::exit(101);
        }));
        Ok(MpiComm {
            world,
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

    /// The arrival check before a collective of `kind` with `len` bytes and root `root`
    /// (see the module's documentation). Ends the job through `MPI_Abort` when a rank does
    /// not arrive within the timeout or arrives at another collective.
    fn arrive(&self, kind: Kind, len: usize, root: usize) {
        let Some(timeout) = self.timeout else { return };
        let seq = self.entered.get();
        self.entered.set(seq + 1);
        let (rank, size) = (self.rank(), self.size());
        if size == 1 {
            return;
        }
        let wire: Arrival = [seq, kind as u64, len as u64, root as u64];
        let what = describe(wire);
        if rank == 0 {
            let mut arrived: Vec<Arrival> = vec![[0; 4]; size - 1];
            mpi::request::scope(|scope| {
                let pending = arrived
                    .iter_mut()
                    .enumerate()
                    .map(|(i, slot)| {
                        let from = self.world.process_at_rank(i as i32 + 1);
                        (
                            i + 1,
                            from.immediate_receive_into_with_tag(scope, &mut slot[..], TAG_ARRIVE),
                        )
                    })
                    .collect();
                let late = poll(pending, Instant::now() + timeout);
                if !late.is_empty() {
                    eprintln!(
                        "modula-dist: rank 0 waited {}s for rank(s) {late:?} to reach {what}; they hung or stopped, so the job ends here (MPI_Abort, exit code {HUNG_EXIT})",
                        timeout.as_secs_f32()
                    );
                    self.world.abort(HUNG_EXIT);
                }
            });
            if let Some((i, other)) = arrived.iter().enumerate().find(|(_, w)| **w != wire) {
                eprintln!(
                    "modula-dist: rank {} reached {} while rank 0 reached {what}: the ranks call collectives in different orders or with different arguments; the job ends here (MPI_Abort, exit code {HUNG_EXIT})",
                    i + 1,
                    describe(*other)
                );
                self.world.abort(HUNG_EXIT);
            }
            for q in 1..size {
                self.world
                    .process_at_rank(q as i32)
                    .send_with_tag(&wire[..], TAG_GO);
            }
        } else {
            let mut go: Arrival = [0; 4];
            // Rank 0 starts its clock when it arrives itself, possibly later than this rank
            // (after evaluating or writing a checkpoint): twice the timeout leaves it the time
            // to name the missing rank first.
            let patience = timeout * 2;
            mpi::request::scope(|scope| {
                let lead = self.world.process_at_rank(0);
                let pending = vec![
                    (
                        0,
                        lead.immediate_send_with_tag(scope, &wire[..], TAG_ARRIVE),
                    ),
                    (
                        0,
                        lead.immediate_receive_into_with_tag(scope, &mut go[..], TAG_GO),
                    ),
                ];
                if !poll(pending, Instant::now() + patience).is_empty() {
                    eprintln!(
                        "modula-dist: rank {rank} waited {}s for rank 0 to release {what}; rank 0, or a rank it waits for, hung or stopped, so the job ends here (MPI_Abort, exit code {HUNG_EXIT})",
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
    mut requests: Vec<(usize, Request<'a, [u64], &LocalScope<'a>>)>,
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
            // The job is about to be aborted; dropping an incomplete request would panic
            // (rsmpi's `Request::drop`), and the panic hook would end the process before
            // the message and `MPI_Abort`.
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
        self.arrive(Kind::Barrier, 0, 0);
        self.world.barrier();
        Ok(())
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), DistError> {
        count(data.len() * 4, "an allreduce buffer")?;
        self.arrive(Kind::AllReduce, size_of_val(data), 0);
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
        self.arrive(Kind::AllToAllV, 0, 0);
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
        self.arrive(Kind::Broadcast, size_of_val(data), root);
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(bytemuck::cast_slice_mut::<T, u8>(data));
        Ok(())
    }
}
