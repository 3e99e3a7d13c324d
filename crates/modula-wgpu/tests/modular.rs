//! The routed modular layer (modula-modular) on wgpu equals its CPU result: forward outputs,
//! input and gate gradients, and the accumulated weight and bias gradients.
//!
//! Tolerance: `|wgpu - cpu| <= 1e-4 + 1e-4 * |cpu|` (the conformance suite's default), with
//! inputs of magnitude about 1 and inner dimensions up to 128.

use modula_cpu::Cpu;
use modula_modular::{ModularLinear, Routing, Selection};
use modula_nn::{Grads, ParamStore};
use modula_tensor::Backend;
use modula_wgpu::Wgpu;
use modula_wgpu::testing::backend_or_skip;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{what}: element {i} is {g} on wgpu, {w} on the CPU"
        );
    }
}

/// Builds the same layer, inputs and routing on both backends and compares every output.
fn compare(gpu: &Wgpu, n: usize, modules: usize, k: usize, d_in: usize, d_out: usize, gated: bool) {
    let cpu = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64((n * 31 + modules * 7 + k) as u64);
    let mut cpu_params = ParamStore::new();
    let mut gpu_params = ParamStore::new();
    let layer = ModularLinear::new(
        &cpu,
        &mut cpu_params,
        "layer",
        modules,
        d_in,
        d_out,
        &mut rng.clone(),
    );
    ModularLinear::new(
        gpu,
        &mut gpu_params,
        "layer",
        modules,
        d_in,
        d_out,
        &mut rng,
    );
    // Non-zero biases, so that the bias path is exercised too.
    let bias: Vec<f32> = (0..modules * d_out)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    *cpu_params.get_mut(layer.bias) = cpu.upload([modules, d_out], &bias);
    *gpu_params.get_mut(layer.bias) = gpu.upload([modules, d_out], &bias);

    // Random choices with repeats inside a row (a module picked twice) and unused modules.
    let choices: Vec<u32> = (0..n * k)
        .map(|_| rng.random_range(0..modules as u32 - 1))
        .collect();
    let routing = Routing::new(&Selection::new(k, choices), modules);
    let x: Vec<f32> = (0..n * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dy: Vec<f32> = (0..n * d_out)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let gates: Vec<f32> = (0..n * k).map(|_| rng.random_range(0.0..1.0)).collect();

    let (cx, gx) = (cpu.upload([n, d_in], &x), gpu.upload([n, d_in], &x));
    let (cg, gg) = (cpu.upload([n, k], &gates), gpu.upload([n, k], &gates));
    let (cy, c_cache) = layer.forward(&cpu, &cpu_params, &cx, &routing, gated.then_some(&cg));
    let (gy, g_cache) = layer.forward(gpu, &gpu_params, &gx, &routing, gated.then_some(&gg));
    let tag = format!("n={n} M={modules} K={k} d_in={d_in} d_out={d_out} gated={gated}");
    close(
        &format!("forward {tag}"),
        &gpu.download(&gy).unwrap(),
        &cpu.download(&cy).unwrap(),
    );

    let mut c_grads = Grads::new();
    let mut g_grads = Grads::new();
    let (cdx, cdg) = layer.backward(
        &cpu,
        &cpu_params,
        &routing,
        c_cache,
        &cpu.upload([n, d_out], &dy),
        &mut c_grads,
    );
    let (gdx, gdg) = layer.backward(
        gpu,
        &gpu_params,
        &routing,
        g_cache,
        &gpu.upload([n, d_out], &dy),
        &mut g_grads,
    );
    close(
        &format!("dx {tag}"),
        &gpu.download(&gdx).unwrap(),
        &cpu.download(&cdx).unwrap(),
    );
    assert_eq!(cdg.is_some(), gated);
    if let (Some(c), Some(g)) = (cdg, gdg) {
        close(
            &format!("dgates {tag}"),
            &gpu.download(&g).unwrap(),
            &cpu.download(&c).unwrap(),
        );
    }
    for (id, what) in [(layer.weight, "dW"), (layer.bias, "db")] {
        let c = cpu.download(c_grads.get(id).expect("gradient")).unwrap();
        let g = gpu.download(g_grads.get(id).expect("gradient")).unwrap();
        close(&format!("{what} {tag}"), &g, &c);
    }
}

#[test]
fn modular_layer_matches_cpu() {
    let Some(gpu) = backend_or_skip("modular_layer_matches_cpu") else {
        return;
    };
    for gated in [false, true] {
        compare(&gpu, 37, 5, 2, 9, 6, gated);
        compare(&gpu, 300, 8, 3, 40, 24, gated);
    }
    // A modular-layer bench shape scaled down: 16 modules, K = 2, width 128.
    compare(&gpu, 256, 16, 2, 128, 128, false);
}
