//! The modula-tensor conformance suite on the wgpu backend, against the reference oracle.
//!
//! Tolerance: `|got - want| <= 1e-4 + 1e-4 * |want|`, the suite's default, which the suite
//! widens tenfold for (grouped) matmuls. The kernels sum in a different order than the
//! reference (tiles, trees), and drivers may compute exp, log and division to a few ULP, so
//! bit equality is not expected.

use modula_tensor::conformance::{self, Tolerance};
use modula_wgpu::testing::backend_or_skip;

#[test]
fn conformance_suite_passes() {
    let Some(gpu) = backend_or_skip("conformance_suite_passes") else {
        return;
    };
    eprintln!("adapter: {}", gpu.adapter());
    let failures = conformance::run_all(&gpu, &Tolerance::default());
    assert!(failures.is_empty(), "{failures:#?}");
}
