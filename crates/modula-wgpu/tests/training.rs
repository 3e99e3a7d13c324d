//! End to end: the toy EM task (modula-tasks' `ToyTask`, generic over the backend)
//! trains on wgpu and its loss curve tracks the CPU run's.
//!
//! Both runs start from the same seed, so they see the same data, initialisation and
//! mini-batches. They are not bit-identical (the kernels sum in another order), and EM's
//! E-step takes an argmax over sampled assignments, so a near-tie can go differently and
//! the trajectories may drift apart. The comparison is therefore on the curve, not per
//! step: the mean task NLL over each window of 50 gradient steps must agree within 1% (plus
//! 0.01 nats), and the final test MSE within 5% of the CPU's. On lavapipe the two curves
//! agree to about eight significant digits.

use modula_cpu::Cpu;
use modula_data::toy::ToyConfig;
use modula_em::models::MlpConfig;
use modula_tasks::{ToyTask, ToyTrainConfig};
use modula_tensor::Backend;
use modula_wgpu::testing::backend_or_skip;

const STEPS: usize = 400;
const WINDOW: usize = 50;

/// Task NLL of every gradient step and the final test MSE.
fn train<B: Backend>(backend: B) -> (Vec<f64>, f64) {
    let task = ToyConfig {
        train: 1024,
        test: 512,
        ..ToyConfig::default()
    };
    let train = ToyTrainConfig {
        steps: STEPS,
        batch_size: 64,
        ..ToyTrainConfig::default()
    };
    let mut run = ToyTask::trainer(backend, &task, &MlpConfig::default(), &train, 7);
    let mut nll = Vec::new();
    for _ in 0..STEPS {
        if let Some(s) = run.step().expect("a training step").gradient {
            nll.push(s.nll);
        }
    }
    let eval = run.task.evaluate(&run.backend, &run.model, &run.params);
    (nll, eval.expect("evaluation").test_mse)
}

fn windows(curve: &[f64]) -> Vec<f64> {
    curve
        .chunks(WINDOW)
        .map(|w| w.iter().sum::<f64>() / w.len() as f64)
        .collect()
}

#[test]
fn toy_em_loss_curve_tracks_cpu() {
    let Some(gpu) = backend_or_skip("toy_em_loss_curve_tracks_cpu") else {
        return;
    };
    let (cpu_curve, cpu_mse) = train(Cpu::with_threads(1));
    let (gpu_curve, gpu_mse) = train(gpu);
    assert_eq!(cpu_curve.len(), gpu_curve.len());
    let (cw, gw) = (windows(&cpu_curve), windows(&gpu_curve));
    eprintln!("window means (task NLL), cpu vs wgpu:");
    for (i, (c, g)) in cw.iter().zip(&gw).enumerate() {
        eprintln!("  steps {:>4}..: {c:>12.6} {g:>12.6}", i * WINDOW);
    }
    eprintln!("final test MSE: cpu {cpu_mse:.7}, wgpu {gpu_mse:.7}");
    for (i, (c, g)) in cw.iter().zip(&gw).enumerate() {
        assert!(
            (c - g).abs() <= 0.01 + 0.01 * c.abs(),
            "window {i}: mean task NLL {g} on wgpu, {c} on the CPU"
        );
    }
    assert!(
        (gpu_mse - cpu_mse).abs() <= 0.05 * cpu_mse,
        "final test MSE {gpu_mse} on wgpu, {cpu_mse} on the CPU"
    );
    // Training did something: the last window's loss is well below the first's.
    assert!(gw.last() < gw.first(), "wgpu loss did not decrease: {gw:?}");
}
