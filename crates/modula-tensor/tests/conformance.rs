//! The CPU backend against the reference oracle, with one and two threads.

use modula_tensor::conformance::{Tolerance, run_all};
use modula_tensor::{Cpu, Reference};

#[test]
fn cpu_single_thread_conforms() {
    let failures = run_all(&Cpu::with_threads(1), &Tolerance::default());
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn cpu_two_threads_conforms() {
    let failures = run_all(&Cpu::with_threads(2), &Tolerance::default());
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn reference_conforms_to_itself() {
    let failures = run_all(&Reference, &Tolerance { abs: 0.0, rel: 0.0 });
    assert!(failures.is_empty(), "{failures:#?}");
}
