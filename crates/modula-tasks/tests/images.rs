//! The image task on small generated image sets: batches carry stable example keys and follow
//! a seeded shuffle, the activation statistics count what they say, the evaluation agrees with
//! a per-image reference, and the FLOP prediction follows the E-step schedule.

use modula_cpu::Cpu;
use modula_data::ImageSet;
use modula_em::models::{FeedForward, ImageModelConfig, ImageNet, MlpInput};
use modula_em::{Algo, Target, Task};
use modula_modular::ControllerOutput;
use modula_nn::Ctx;
use modula_tasks::images::ActivationStats;
use modula_tasks::{ImageData, ImageTask, ImageTrainConfig, Split};
use modula_tensor::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` random `side x side` grey images in 10 classes (labels cycle).
fn images(n: usize, side: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ImageSet {
        height: side,
        width: side,
        channels: 1,
        classes: 10,
        first_index: 0,
        pixels: (0..n * side * side).map(|_| rng.random()).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

fn data(train: usize, test: usize) -> ImageData {
    ImageData {
        train: images(train, 8, 1),
        test: images(test, 8, 2),
        class_names: (0..10).map(|c| c.to_string()).collect(),
    }
}

fn conv() -> ImageModelConfig {
    ImageModelConfig {
        kind: ImageNet::Conv,
        modules: 3,
        k: 1,
        channels: vec![4, 4],
        ..ImageModelConfig::default()
    }
}

fn schedule(batch_size: usize) -> ImageTrainConfig {
    ImageTrainConfig {
        batch_size,
        ..ImageTrainConfig::default()
    }
}

#[test]
fn batches_are_a_seeded_shuffle_keyed_by_position() {
    let b = Cpu::with_threads(1);
    let mut t = ImageTask::trainer(b.clone(), data(100, 20), &conv(), &schedule(16), 5);
    // 100 images in batches of 16: six whole batches an epoch, the rest left out.
    assert_eq!(t.task.steps_per_epoch(), 6);
    let epoch: Vec<Vec<usize>> = (0..6).map(|s| t.task.batch_positions(s)).collect();
    let mut seen: Vec<usize> = epoch.concat();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 96, "an epoch's batches repeat an image");
    // The next epoch is another shuffle; the same seed gives the same batches.
    assert_ne!(t.task.batch_positions(6), epoch[0]);
    let mut again = ImageTask::trainer(b.clone(), data(100, 20), &conv(), &schedule(16), 5);
    assert_eq!(again.task.batch_positions(3), epoch[3]);
    let mut other = ImageTask::trainer(b.clone(), data(100, 20), &conv(), &schedule(16), 6);
    assert_ne!(other.task.batch_positions(0), epoch[0]);
    // Each selection group's keys are the images' positions, for EM's table.
    let batch = t.task.batch(&b, 2);
    assert_eq!(batch.groups.len(), 2, "one group per modular layer");
    for g in &batch.groups {
        let keys: Vec<usize> = g.keys.iter().map(|&k| k as usize).collect();
        assert_eq!(keys, epoch[2]);
    }
    let Target::Classes(labels) = &batch.input.target else {
        panic!("image batches have class targets")
    };
    let expected: Vec<u32> = epoch[2]
        .iter()
        .map(|&p| u32::from(t.task.data.train.labels[p]))
        .collect();
    assert_eq!(labels, &expected);
    // EM's E-step replaces every e_every-th iteration.
    assert_eq!(t.task.e_step_due(20, 10), modula_em::EStepDue::Instead);
    assert_eq!(t.task.e_step_due(21, 10), modula_em::EStepDue::No);
}

#[test]
fn activation_statistics_count_zeros_and_whole_zero_blocks() {
    let mut stats = ActivationStats::default();
    // Two rows of 40: blocks of 32 and 8. Row 0: its first block all zero, two more zeros in
    // the second. Row 1: no zero block, one zero.
    let mut a = vec![1.0f32; 80];
    a[..32].fill(0.0);
    a[33] = 0.0;
    a[35] = 0.0;
    a[50] = 0.0;
    stats.add(0, &a, 2);
    // Layer 1: one row of 3, all zero (a partial block counts as a block).
    stats.add(1, &[0.0; 3], 1);
    let (zeros, blocks) = stats.fractions();
    assert_eq!(zeros, vec![35.0 / 80.0, 1.0]);
    assert_eq!(blocks, vec![1.0 / 4.0, 1.0]);
}

#[test]
fn evaluation_agrees_with_one_image_at_a_time() {
    let b = Cpu::with_threads(1);
    let t = ImageTask::trainer(b.clone(), data(40, 30), &conv(), &schedule(8), 3);
    let eval = t
        .task
        .evaluate(&b, &t.model, &t.params, Split::Test)
        .unwrap();
    assert_eq!(eval.examples, 30);
    // The reference: each test image alone through the greedy forward pass.
    let set = &t.task.data.test;
    let (mut correct, mut nll) = (0usize, 0.0f64);
    let mut usage = vec![0u64; 3];
    for i in 0..set.labels.len() {
        let batch = set.batch(&[i]);
        let input = MlpInput {
            x: b.upload([1, set.image_bytes()], &batch.pixels),
            target: Target::Classes(batch.labels.clone()),
        };
        let mut route = |_: usize, out: &ControllerOutput<Cpu>| out.greedy(&b);
        let out = t
            .model
            .forward_tensors(
                &b,
                &t.params,
                &input.x,
                &input.target,
                &mut route,
                false,
                false,
                &mut Ctx::eval(),
            )
            .unwrap();
        let logits = b.download(&out.prediction).unwrap();
        let best = (0..10)
            .max_by(|&x, &y| logits[x].total_cmp(&logits[y]).then(y.cmp(&x)))
            .unwrap();
        correct += usize::from(best == set.labels[i] as usize);
        nll += f64::from(b.download(&out.task_nll).unwrap()[0]);
        usage[out.selections[0].row(0)[0] as usize] += 1;
    }
    assert!((eval.accuracy - correct as f64 / 30.0).abs() < 1e-12);
    assert!(
        (eval.nll - nll / 30.0).abs() < 1e-5,
        "{} {}",
        eval.nll,
        nll / 30.0
    );
    assert_eq!(eval.usage[0], usage);
    // The class-by-module table splits the first layer's usage by class.
    let by_module: Vec<u64> = (0..3)
        .map(|m| eval.class_usage.iter().map(|row| row[m]).sum())
        .collect();
    assert_eq!(by_module, usage);
    // The conv net's hidden activations are post-ReLU: every layer has a zero fraction.
    assert_eq!(eval.zero_fraction.len(), eval.block_zero_fraction.len());
    assert!(eval.zero_fraction.iter().all(|z| (0.0..=1.0).contains(z)));
}

#[test]
fn the_flop_prediction_follows_the_e_step_schedule() {
    let em = ImageTrainConfig {
        algo: Algo::Em,
        samples: 10,
        e_every: 10,
        ..ImageTrainConfig::default()
    };
    // Nine gradient steps (3 forward passes each) share one E-step of 10 forward passes.
    assert_eq!(em.flops_per_trained_image(900), Some(3.0 * 900.0 + 1000.0));
    let every = ImageTrainConfig { e_every: 1, ..em };
    assert_eq!(every.flops_per_trained_image(900), None);
    let dense = ImageTrainConfig {
        algo: Algo::Dense,
        ..ImageTrainConfig::default()
    };
    assert_eq!(dense.flops_per_trained_image(900), Some(2700.0));
}
