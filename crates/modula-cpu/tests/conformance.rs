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

/// `max_pool2d_backward` of `dy` through `x` (`n` images) on `b`, downloaded.
fn pool_backward<B: modula_tensor::Backend>(
    b: &B,
    x: &[f32],
    dy: &[f32],
    n: usize,
    w: &modula_tensor::Window2d,
) -> Vec<f32> {
    let out_len = w.out_height() * w.out_width() * w.channels;
    let dx = b.max_pool2d_backward(
        &b.upload([n, w.in_len()], x),
        &b.upload([n, out_len], dy),
        w,
    );
    b.download(&dx).expect("host tensor")
}

/// Max pooling's backward sends each output gradient to the first maximal input of its
/// window, as the reference does, when inputs tie (values drawn from {0, 1}) and when a
/// window holds NaN (first in its window, or later), on one thread and two: the random inputs
/// of `run_all` almost never tie.
#[test]
fn max_pool_backward_breaks_ties_and_nan_like_the_reference() {
    let w = modula_tensor::Window2d {
        height: 6,
        width: 6,
        channels: 3,
        kernel_h: 2,
        kernel_w: 2,
        stride: 2,
        padding: 0,
    };
    let n = 40;
    let mut x: Vec<f32> = (0..n * w.in_len())
        .map(|i| ((i * 7919) % 13 % 2) as f32)
        .collect();
    x[0] = f32::NAN;
    x[w.channels * 3 + 1] = f32::NAN;
    let out_len = w.out_height() * w.out_width() * w.channels;
    let dy: Vec<f32> = (0..n * out_len).map(|i| 1.0 + i as f32).collect();
    let want = pool_backward(&modula_tensor::Reference, &x, &dy, n, &w);
    for threads in [1, 2] {
        let got = pool_backward(&Cpu::with_threads(threads), &x, &dy, n, &w);
        assert_eq!(got, want, "{threads} threads");
    }
}
