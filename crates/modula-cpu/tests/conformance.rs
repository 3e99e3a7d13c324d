//! The CPU backend against the reference oracle, with one and two threads, with its own
//! grouped kernels and with the default ones on its core kernels.

use modula_cpu::Cpu;
use modula_tensor::conformance::{CoreOnly, Tolerance, run_all};

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
fn cpu_core_kernels_with_default_grouped_kernels_conform() {
    let failures = run_all(&CoreOnly(Cpu::with_threads(2)), &Tolerance::default());
    assert!(failures.is_empty(), "{failures:#?}");
}
