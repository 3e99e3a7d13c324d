//! A fixed team of threads that splits one product at a time, spinning between products.
//!
//! A routed layer and a recurrent cell issue thousands of products of a few hundred
//! microseconds each. Split across a rayon pool, each of them hands work to a thread that went
//! to sleep after the previous product, and on a VM the wake-up costs tens of microseconds:
//! measured on the 2-vCPU Xeon, a tenth of back-to-back two-thread products ran at half speed,
//! with thousands of context switches a second. A [`Team`] keeps its threads spinning for
//! [`SPIN`] after each task (as OpenMP's threads do, for 200 ms by default in Intel's runtime),
//! so a product that follows another within that time starts on every thread at once; only
//! then do they park.
//!
//! One job runs at a time. A caller that finds the team busy (another thread's product, or a
//! task of the team's own job asking to split further) runs its tasks itself, one after another,
//! so nesting never deadlocks.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a thread of the team waits for the next task, spinning, before it parks: longer
/// than the gap between the products of one training step, short enough that an idle team
/// gives its cores back within a fraction of a millisecond.
pub const SPIN: Duration = Duration::from_micros(300);

/// Bits of the job word holding the number of tasks; the generation sits above them.
const TASK_BITS: u32 = 16;

/// A job's tasks, by index, with the caller's lifetime erased (see [`Team::run`]).
type Job = &'static (dyn Fn(usize) + Sync);

/// A team of `threads - 1` spinning threads, the caller of [`run`](Team::run) being the
/// other one.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the caller of a job for as long as the job is out.
    busy: Mutex<()>,
}

/// What the caller and the team's threads share.
struct Shared {
    /// The current job's generation (above [`TASK_BITS`]) and task count (below): one word,
    /// so a thread that takes no part in a job learns so without reading the job itself.
    word: AtomicU64,
    /// The current job: written by the caller before it publishes `word`, read by the threads
    /// that take part after they see it, and not written again until all of them are done.
    job: UnsafeCell<Option<Job>>,
    /// Tasks of the current job not yet finished by the team's threads.
    pending: AtomicUsize,
    /// Whether each team thread is parked (or about to park), so the caller knows whom to wake.
    parked: Vec<AtomicBool>,
    /// The payload of the first panic of a team thread's task in the current job; the caller
    /// re-raises it.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Set when the team is dropped.
    stop: AtomicBool,
}

// SAFETY: `job` is the only field that is not `Sync` by itself; it is written only by the
// holder of `Team::busy` while no job is out (`pending == 0`) and read only by the threads of
// the job it was written for, ordered by the release/acquire pair on `word`.
unsafe impl Sync for Shared {}

impl Team {
    /// A team for products split `threads` ways: starts `threads - 1` threads (none for 0 or 1).
    ///
    /// # Panics
    /// If the operating system refuses to start a thread, or `threads` is 2^16 or more.
    pub fn new(threads: usize) -> Self {
        let helpers = threads.saturating_sub(1);
        assert!(
            threads < 1 << TASK_BITS,
            "a team of {threads} threads is too large"
        );
        let shared = Arc::new(Shared {
            word: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            parked: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        // Built as a team from the first thread on, so that if a later thread fails to start,
        // dropping the team stops and joins the ones already running.
        let mut team = Team {
            shared,
            workers: Vec::with_capacity(helpers),
            busy: Mutex::new(()),
        };
        for index in 1..=helpers {
            let shared = Arc::clone(&team.shared);
            let worker = thread::Builder::new()
                .name(format!("modula-team-{index}"))
                .spawn(move || shared.serve(index))
                .expect("failed to start a thread of the CPU backend's team");
            team.workers.push(worker);
        }
        team
    }

    /// The number of ways a job can be split: the team's threads and the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `task(i)` once for every `i` in `0..tasks`, the caller taking `0` and thread `i`
    /// of the team task `i`, and returns when all have returned. Tasks beyond
    /// [`threads`](Self::threads) run on the caller after its own. A panic in any task is
    /// re-raised here, with its payload, once every task has finished.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let shared_tasks = tasks.min(self.threads());
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..tasks).for_each(task);
                return;
            }
        };
        if shared_tasks <= 1 {
            (0..tasks).for_each(task);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: the lifetime is erased only for as long as the job is out: `Wait` below does
        // not let this function return or unwind before every team thread taking part has
        // finished with `task`, and the others never read it (they see from `word` alone that
        // they take no part).
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(task) };
        // SAFETY: no job is out (the previous caller waited for `pending == 0`) and `busy` is
        // held, so no one else reads or writes `job`.
        unsafe { *shared.job.get() = Some(job) };
        shared.pending.store(shared_tasks - 1, Ordering::Relaxed);
        // A team thread's payload left by a job whose caller's own task panicked first (and
        // so never took it) must not surface in this job.
        shared
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let generation = (shared.word.load(Ordering::Relaxed) >> TASK_BITS) + 1;
        // Sequentially consistent with the `parked` flags: either a thread that is about to
        // park sees this word, or this caller sees its flag and wakes it.
        shared.word.store(
            generation << TASK_BITS | shared_tasks as u64,
            Ordering::SeqCst,
        );
        for index in 1..shared_tasks {
            if shared.parked[index - 1].load(Ordering::SeqCst) {
                self.workers[index - 1].thread().unpark();
            }
        }
        let wait = Wait(shared);
        (0..1).chain(shared_tasks..tasks).for_each(task);
        drop(wait);
        let panic = shared
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for worker in &self.workers {
            worker.thread().unpark();
        }
        for worker in self.workers.drain(..) {
            // A team thread catches its tasks' panics, so it cannot have panicked itself.
            let _ = worker.join();
        }
    }
}

/// Waits, also while unwinding from a panic in the caller's own task, until the team's threads
/// have finished the job: until then they may still read the caller's borrowed task. Then
/// clears the job slot, so that no reference to the task outlives the call.
struct Wait<'a>(&'a Shared);

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        // Yielding rather than spinning bare: on a busy machine the team thread may be waiting
        // for this very core.
        while self.0.pending.load(Ordering::Acquire) != 0 {
            thread::yield_now();
        }
        // SAFETY: every team thread taking part is done with the job, the others never read
        // it, and the caller still holds `busy`.
        unsafe { *self.0.job.get() = None };
    }
}

/// Counts a team thread's task as finished when dropped, so that a task whose panic cannot
/// be caught cleanly (a payload whose own drop panics) still releases the caller.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Shared {
    /// Thread `index` of the team: waits for each job and runs its task of it, if it has one.
    fn serve(&self, index: usize) {
        let mut seen = 0;
        while let Some(word) = self.next_job(index, seen) {
            seen = word >> TASK_BITS;
            if index < (word & ((1 << TASK_BITS) - 1)) as usize {
                // SAFETY: the job was written before `word` was published (acquire in
                // `next_job`) and stays until this thread decrements `pending`.
                let job = unsafe { (*self.job.get()).expect("a job is out") };
                let _finished = Finished(&self.pending);
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(index))) {
                    let mut slot = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
                    slot.get_or_insert(payload);
                }
            }
        }
    }

    /// The word of the first job after generation `seen`, spinning for [`SPIN`] and then
    /// parking; `None` once the team is dropped.
    fn next_job(&self, index: usize, seen: u64) -> Option<u64> {
        let mut since = Instant::now();
        let mut spins = 0u32;
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word >> TASK_BITS != seen {
                return Some(word);
            }
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if since.elapsed() < SPIN {
                // A few pause instructions first (the next job is usually a few hundred
                // nanoseconds away), then yields, so a thread that needs this core gets it.
                if spins < 64 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    thread::yield_now();
                }
                continue;
            }
            let parked = &self.parked[index - 1];
            parked.store(true, Ordering::SeqCst);
            if self.word.load(Ordering::SeqCst) >> TASK_BITS == seen
                && !self.stop.load(Ordering::SeqCst)
            {
                thread::park();
            }
            parked.store(false, Ordering::Relaxed);
            since = Instant::now();
            spins = 0;
        }
    }
}
