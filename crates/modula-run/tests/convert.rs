//! A converted network computes the dense network it came from: with every group selected,
//! its logits are the dense logits (the same weights summed in another order), and with any
//! selection they are the dense network's with the unselected groups' neurons zeroed.

use modula_cluster::Partition;
use modula_cpu::Cpu;
use modula_em::models::{FeedForward, ImageModel, ImageModelConfig, ImageNet, ReluMlp};
use modula_em::{Algo, DenseMatch, Target};
use modula_modular::ControllerOutput;
use modula_nn::{Ctx, Dispatch, ExtraTensors, Module, ParamStore};
use modula_run::convert::converted_params;
use modula_tensor::{Backend, BinaryOp, UnaryOp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D_IN: usize = 12;
const HIDDEN: [usize; 2] = [16, 16];
const CLASSES: usize = 5;
const ROWS: usize = 9;

/// The dense network's logits with hidden layer `l`'s neurons multiplied by `masks[l]`
/// (`[n, width]`; none: all kept).
fn dense_logits(
    b: &Cpu,
    net: &ReluMlp,
    params: &ParamStore<Cpu>,
    x: &<Cpu as Backend>::Tensor,
    masks: Option<&[Vec<f32>]>,
) -> Vec<f32> {
    let mut ctx = Ctx::eval();
    let (mut z, _) = net.first.forward(b, params, x, &mut ctx);
    for (l, layer) in net.layers.iter().enumerate() {
        let mut a = b.unary(UnaryOp::Relu, &z);
        if let Some(m) = masks {
            a = b.binary(BinaryOp::Mul, &a, &b.upload(b.shape(&a), &m[l]));
        }
        // The next product reads `a` as its input: a dense layer over the ReLU output is
        // SparseLinear's forward of a pre-activation equal to `a` (relu(a) = a).
        (z, _) = layer.forward(b, params, &a, &mut ctx);
    }
    b.download(&z).unwrap()
}

/// A converted network of `m` groups with `k` computed per row, the dense network, random
/// partitions and routers, and the converted network's logits and selections on `x`.
fn setup(m: usize, k: usize, seed: u64) -> (f32, Vec<f32>, Vec<f32>, Vec<f32>) {
    let b = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut dense_params = ParamStore::new();
    let net = ReluMlp::new(
        &b,
        &mut dense_params,
        D_IN,
        &HIDDEN,
        CLASSES,
        Dispatch::Dense,
        (0.0, 0.0),
        &mut rng,
    );
    // Non-zero biases, so that a misplaced bias shows.
    for id in dense_params.ids().collect::<Vec<_>>() {
        let shape = b.shape(dense_params.get(id));
        if shape[0] == 1 {
            let v: Vec<f32> = (0..shape[1]).map(|_| rng.random_range(-0.5..0.5)).collect();
            *dense_params.get_mut(id) = b.upload(shape, &v);
        }
    }
    let partitions: Vec<Partition> = HIDDEN
        .iter()
        .enumerate()
        .map(|(l, &w)| Partition::random(w, m, seed + l as u64).unwrap())
        .collect();
    let inputs = [D_IN, HIDDEN[0]];
    let routers: Vec<(Vec<f32>, Vec<f32>)> = inputs
        .iter()
        .map(|&d| {
            (
                (0..d * m).map(|_| rng.random_range(-1.0..1.0)).collect(),
                (0..m).map(|_| rng.random_range(-1.0..1.0)).collect(),
            )
        })
        .collect();
    let ck = converted_params(&b, &net, &dense_params, &partitions, &routers, Algo::Em).unwrap();
    let model = ImageModelConfig {
        kind: ImageNet::Groups,
        modules: m,
        k,
        hidden: HIDDEN.to_vec(),
        ..ImageModelConfig::default()
    };
    model.validate(Algo::Em).unwrap();
    let mut params = ParamStore::new();
    let converted = ImageModel::new(
        &b,
        &mut params,
        [D_IN, 1, 1],
        CLASSES,
        &model,
        Algo::Em,
        DenseMatch::Compute,
        0.0,
        &mut rng,
    );
    ck.load_params(&b, &mut params, ExtraTensors::Reject)
        .unwrap();
    let xs: Vec<f32> = (0..ROWS * D_IN)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = b.upload([ROWS, D_IN], &xs);
    let mut greedy = |_: usize, out: &ControllerOutput<Cpu>| out.greedy(&b);
    let out = converted
        .forward_tensors(
            &b,
            &params,
            &x,
            &Target::Classes(vec![0; ROWS]),
            &mut greedy,
            false,
            false,
            &mut Ctx::eval(),
        )
        .unwrap();
    // The dense network with the unselected groups' neurons zeroed.
    let masks: Vec<Vec<f32>> = out
        .selections
        .iter()
        .zip(&partitions)
        .map(|(sel, p)| {
            let mut mask = vec![0.0f32; ROWS * p.width()];
            for i in 0..ROWS {
                for &g in sel.row(i) {
                    for &neuron in p.members(g as usize) {
                        mask[i * p.width() + neuron as usize] = 1.0;
                    }
                }
            }
            mask
        })
        .collect();
    let all = dense_logits(&b, &net, &dense_params, &x, None);
    let masked = dense_logits(&b, &net, &dense_params, &x, Some(&masks));
    let kept = masks[0].iter().sum::<f32>() / masks[0].len() as f32;
    (kept, b.download(&out.prediction).unwrap(), all, masked)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
            "{what}, logit {i}: converted {g}, dense {w}"
        );
    }
}

#[test]
fn every_group_selected_reproduces_the_dense_network() {
    for seed in 0..4 {
        let (kept, converted, dense, _) = setup(4, 4, seed);
        assert_eq!(kept, 1.0, "K = M keeps every neuron");
        assert_close(&converted, &dense, "all groups");
    }
}

#[test]
fn a_routed_conversion_is_the_dense_network_without_its_unselected_groups() {
    for seed in 0..4 {
        let (kept, converted, dense, masked) = setup(4, 2, seed);
        assert_eq!(kept, 0.5, "K = 2 of 4 keeps half the neurons");
        assert_close(&converted, &masked, "two groups of four");
        // The routing matters: without it the logits would be the dense ones.
        assert!(
            converted
                .iter()
                .zip(&dense)
                .any(|(c, d)| (c - d).abs() > 1e-3)
        );
    }
}
