//! Behaviour the conformance suite does not reach: batches that overflow and are submitted
//! mid-sequence, deep copies, deterministic scatter-adds, larger products against the CPU,
//! contract panics and device errors.

use modula_cpu::Cpu;
use modula_tensor::{Backend, BackendError, GroupedOp, Transpose};
use modula_wgpu::testing::backend_or_skip;
use modula_wgpu::{Wgpu, WgpuOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol + tol * w.abs(),
            "{what}: element {i} is {g}, expected {w}"
        );
    }
}

/// A backend of its own, for tests that change options or provoke errors.
fn own_backend(test: &str, options: WgpuOptions) -> Option<Wgpu> {
    backend_or_skip(test)?;
    Some(Wgpu::with_options(options).expect("the shared backend opened, so this one does"))
}

#[test]
fn long_sequences_span_several_submissions() {
    // Tiny batches force submissions between dispatches, including between an index list
    // and the dispatch that reads it.
    let options = WgpuOptions {
        max_batch: 3,
        ..WgpuOptions::default()
    };
    let Some(gpu) = own_backend("long_sequences_span_several_submissions", options) else {
        return;
    };
    let mut y = gpu.zeros([4, 5]);
    let x = gpu.upload([4, 5], &[1.0; 20]);
    for _ in 0..100 {
        gpu.axpy(0.5, &x, &mut y);
        let g = gpu.gather_rows(&y, &[3, 2, 1, 0]);
        gpu.axpy(0.0, &g, &mut y);
    }
    assert_eq!(gpu.download(&y).unwrap(), vec![50.0; 20]);
}

#[test]
fn duplicate_is_a_deep_copy_and_reshape_keeps_data() {
    let Some(gpu) = backend_or_skip("duplicate_is_a_deep_copy_and_reshape_keeps_data") else {
        return;
    };
    let mut a = gpu.upload([2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = gpu.duplicate(&a);
    gpu.scale(&mut a, 10.0);
    assert_eq!(
        gpu.download(&b).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    let r = gpu.reshape(a, [3, 2]);
    assert_eq!(gpu.shape(&r), [3, 2]);
    assert_eq!(
        gpu.download(&r).unwrap(),
        vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    );
}

#[test]
fn scatter_add_with_repeats_is_deterministic() {
    let Some(gpu) = backend_or_skip("scatter_add_with_repeats_is_deterministic") else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, n, cols) = (7, 5000, 33);
    let idx: Vec<u32> = (0..n).map(|_| rng.random_range(0..rows as u32)).collect();
    let src = random(&mut rng, n * cols);
    let run = || {
        let mut dst = gpu.zeros([rows, cols]);
        gpu.scatter_add_rows(&mut dst, &gpu.upload([n, cols], &src), &idx);
        gpu.download(&dst).unwrap()
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first, "scatter-add must not depend on scheduling");
    }
    let cpu = Cpu::with_threads(1);
    let mut want = cpu.zeros([rows, cols]);
    cpu.scatter_add_rows(&mut want, &cpu.upload([n, cols], &src), &idx);
    close(
        "scatter_add_rows",
        &first,
        &cpu.download(&want).unwrap(),
        1e-4,
    );
}

#[test]
fn large_products_match_cpu() {
    let Some(gpu) = backend_or_skip("large_products_match_cpu") else {
        return;
    };
    let cpu = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Many tiles in both directions, edges included; accumulate into an existing C.
    let (m, k, n) = (257, 300, 190);
    let (a, b, c) = (
        random(&mut rng, m * k),
        random(&mut rng, k * n),
        random(&mut rng, m * n),
    );
    let mut gc = gpu.upload([m, n], &c);
    let mut cc = cpu.upload([m, n], &c);
    gpu.matmul(
        0.5,
        &gpu.upload([k, m], &a),
        Transpose::Yes,
        &gpu.upload([n, k], &b),
        Transpose::Yes,
        1.0,
        &mut gc,
    );
    cpu.matmul(
        0.5,
        &cpu.upload([k, m], &a),
        Transpose::Yes,
        &cpu.upload([n, k], &b),
        Transpose::Yes,
        1.0,
        &mut cc,
    );
    close(
        "matmul",
        &gpu.download(&gc).unwrap(),
        &cpu.download(&cc).unwrap(),
        1e-4,
    );

    // A routed layer's shapes: 16 groups, uneven sizes, one empty.
    let sizes = [
        70usize, 0, 5, 130, 64, 1, 9, 200, 3, 66, 65, 12, 40, 8, 100, 27,
    ];
    let mut offsets = vec![0u32];
    for s in sizes {
        offsets.push(offsets.last().unwrap() + s as u32);
    }
    let (p, d_in, d_out) = (*offsets.last().unwrap() as usize, 96, 80);
    let x = random(&mut rng, p * d_in);
    let w = random(&mut rng, sizes.len() * d_in * d_out);
    let dy = random(&mut rng, p * d_out);
    for (op, a, b, shape_a, shape_b, shape_c) in [
        (
            GroupedOp::XW,
            &x,
            &w,
            [p, d_in],
            [16 * d_in, d_out],
            [p, d_out],
        ),
        (
            GroupedOp::XWt,
            &dy,
            &w,
            [p, d_out],
            [16 * d_in, d_out],
            [p, d_in],
        ),
        (
            GroupedOp::XtY,
            &x,
            &dy,
            [p, d_in],
            [p, d_out],
            [16 * d_in, d_out],
        ),
    ] {
        let mut gc = gpu.zeros(shape_c);
        let mut cc = cpu.zeros(shape_c);
        gpu.grouped_matmul(
            op,
            &gpu.upload(shape_a, a),
            &gpu.upload(shape_b, b),
            &offsets,
            0.0,
            &mut gc,
        );
        cpu.grouped_matmul(
            op,
            &cpu.upload(shape_a, a),
            &cpu.upload(shape_b, b),
            &offsets,
            0.0,
            &mut cc,
        );
        close(
            &format!("grouped {op:?}"),
            &gpu.download(&gc).unwrap(),
            &cpu.download(&cc).unwrap(),
            1e-4,
        );
    }
}

#[test]
#[should_panic(expected = "gather_rows: index 4 out of range")]
fn contract_violations_panic_like_the_cpu() {
    let Some(gpu) = backend_or_skip("contract_violations_panic_like_the_cpu") else {
        // Skipping must still satisfy should_panic.
        panic!("gather_rows: index 4 out of range (skipped: no adapter)");
    };
    let x = gpu.zeros([4, 2]);
    gpu.gather_rows(&x, &[0, 4]);
}

#[test]
fn oversized_tensors_surface_as_out_of_memory_at_download() {
    let Some(gpu) = own_backend(
        "oversized_tensors_surface_as_out_of_memory_at_download",
        WgpuOptions::default(),
    ) else {
        return;
    };
    // 2^17 x 2^16 floats is 32 GiB, beyond any device's single buffer.
    let big = gpu.zeros([1 << 17, 1 << 16]);
    let small = gpu.upload([1, 2], &[1.0, 2.0]);
    match gpu.download(&small) {
        Err(BackendError::OutOfMemory(msg)) => assert!(msg.contains("bytes"), "{msg}"),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // The error is reported once; the device stays usable.
    assert_eq!(gpu.download(&small).unwrap(), vec![1.0, 2.0]);
    drop(big);
}

#[test]
fn no_matching_adapter_is_no_device() {
    let options = WgpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..WgpuOptions::default()
    };
    match Wgpu::with_options(options) {
        Err(BackendError::NoDevice(msg)) => eprintln!("as expected: {msg}"),
        other => panic!("expected NoDevice, got {other:?}"),
    }
}
