//! The CPU backend's thread team: every task runs exactly once, on every path a job can take
//! (threads spinning, threads parked, a busy team, nesting, panics).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use modula_cpu::Team;
use modula_cpu::team::SPIN;

/// Runs a job of `tasks` tasks and returns how many times each index ran.
fn counts(team: &Team, tasks: usize) -> Vec<usize> {
    let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
    team.run(tasks, &|i| {
        hits[i].fetch_add(1, Ordering::Relaxed);
    });
    hits.into_iter().map(AtomicUsize::into_inner).collect()
}

#[test]
fn every_task_runs_once_whether_the_threads_spin_or_park() {
    for threads in [1, 2, 4] {
        let team = Team::new(threads);
        assert_eq!(team.threads(), threads);
        for round in 0..200 {
            // Up to three more tasks than threads: the extra ones run on the caller.
            let tasks = round % (threads + 4);
            assert_eq!(
                counts(&team, tasks),
                vec![1; tasks],
                "{threads} threads, {tasks} tasks"
            );
            // Every tenth job finds the team's threads parked.
            if round % 10 == 0 {
                std::thread::sleep(SPIN * 3);
            }
        }
    }
}

#[test]
fn the_caller_takes_task_zero_and_each_thread_its_own() {
    let team = Team::new(3);
    let caller = std::thread::current().id();
    let ids = std::sync::Mutex::new(vec![None; 3]);
    team.run(3, &|i| {
        ids.lock().unwrap()[i] = Some(std::thread::current().id())
    });
    let ids: Vec<_> = ids
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(ids[0], caller);
    assert!(
        ids[1] != caller && ids[2] != caller && ids[1] != ids[2],
        "{ids:?}"
    );
}

#[test]
fn a_job_started_inside_a_task_runs_on_its_caller() {
    let team = Team::new(2);
    let inner = AtomicUsize::new(0);
    team.run(2, &|_| {
        team.run(2, &|_| {
            inner.fetch_add(1, Ordering::Relaxed);
        })
    });
    assert_eq!(inner.into_inner(), 4);
}

#[test]
fn callers_on_several_threads_all_finish() {
    let team = Arc::new(Team::new(2));
    let done = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (team, done) = (Arc::clone(&team), Arc::clone(&done));
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert_eq!(counts(&team, 2), vec![1, 1]);
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for caller in callers {
        caller.join().expect("a caller panicked");
    }
    assert_eq!(done.load(Ordering::Relaxed), 4);
}

#[test]
fn a_panic_on_a_team_thread_reaches_the_caller_and_the_team_goes_on() {
    let team = Team::new(2);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        team.run(2, &|i| assert!(i != 1, "task 1 fails"));
    }));
    // The caller re-raises the team thread's own payload, message included.
    let payload = caught.expect_err("the panic reaches the caller");
    let message = payload.downcast_ref::<&str>().copied();
    assert_eq!(message, Some("task 1 fails"));
    assert_eq!(counts(&team, 2), vec![1, 1]);
}

#[test]
fn a_panicking_caller_waits_for_the_team_before_unwinding() {
    let team = Team::new(2);
    // Task 1 is still reading the borrowed state when task 0 panics; the unwinding must not
    // pass `run` (and free that state) before task 1 is done.
    let finished = AtomicBool::new(false);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        team.run(2, &|i| {
            if i == 0 {
                panic!("the caller's task fails");
            }
            std::thread::sleep(Duration::from_millis(20));
            finished.store(true, Ordering::Relaxed);
        });
    }));
    assert!(caught.is_err());
    assert!(finished.load(Ordering::Relaxed));
    assert_eq!(counts(&team, 2), vec![1, 1]);
    // Both tasks panic: the caller re-raises its own, and the team thread's payload, never
    // taken, does not surface in the next job.
    let caught = catch_unwind(AssertUnwindSafe(|| {
        team.run(2, &|i| {
            if i == 1 {
                panic!("the team thread's task fails");
            }
            std::thread::sleep(Duration::from_millis(20));
            panic!("the caller's task fails");
        });
    }));
    let payload = caught.expect_err("the caller's panic unwinds");
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("the caller's task fails")
    );
    assert_eq!(counts(&team, 2), vec![1, 1]);
}
