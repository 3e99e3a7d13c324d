//! The reference oracle against itself, and the default grouped kernels (built from core
//! operations) against the reference's own grouped loops.

use modula_tensor::Reference;
use modula_tensor::conformance::{CoreOnly, Tolerance, run_all};

#[test]
fn reference_conforms_to_itself() {
    let failures = run_all(&Reference, &Tolerance { abs: 0.0, rel: 0.0 });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A backend that implements only the core kernels passes the whole suite, the grouped
/// products included, through the default bodies of `GroupedKernels`.
#[test]
fn core_only_backend_conforms_through_the_default_grouped_kernels() {
    let failures = run_all(&CoreOnly(Reference), &Tolerance::default());
    assert!(failures.is_empty(), "{failures:#?}");
}
