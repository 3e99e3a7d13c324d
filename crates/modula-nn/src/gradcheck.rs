//! Finite-difference gradient checking, shared by every crate that writes a backward pass.
//!
//! The analytic gradient of a scalar objective is compared with central differences
//! `(L(x + eps) - L(x - eps)) / (2 eps)`, element by element, for every parameter and input.
//! Objectives are accumulated in f64 on the host so that f32 rounding in the forward pass
//! stays well below the tolerance.

use modula_tensor::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamId, ParamStore};

/// Step size and tolerances of a check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Central-difference step.
    pub eps: f32,
    /// Absolute tolerance.
    pub abs: f64,
    /// Relative tolerance (of the larger of the two gradients).
    pub rel: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-2,
            abs: 2e-3,
            rel: 2e-2,
        }
    }
}

/// What is being differentiated: a parameter or the i-th input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrt {
    /// A parameter of the store.
    Param(ParamId),
    /// The i-th input tensor.
    Input(usize),
}

/// Compares analytic gradients with central differences.
///
/// `objective(params, inputs)` returns the scalar loss; `gradients(params, inputs)` returns
/// the parameter gradients and one gradient per input. Every element of every parameter and
/// input is perturbed in turn (keep the tensors small). Returns a description of the first
/// element that disagrees.
///
/// # Errors
/// `Err(message)` naming the tensor, element, analytic and numeric values on a mismatch.
pub fn check<B: Backend>(
    b: &B,
    params: &mut ParamStore<B>,
    inputs: &mut [B::Tensor],
    cfg: &GradCheck,
    objective: impl Fn(&B, &ParamStore<B>, &[B::Tensor]) -> f64,
    gradients: impl Fn(&B, &ParamStore<B>, &[B::Tensor]) -> (Grads<B>, Vec<B::Tensor>),
) -> Result<(), String> {
    let (grads, input_grads) = gradients(b, params, inputs);
    assert_eq!(input_grads.len(), inputs.len(), "one gradient per input");
    let mut targets: Vec<Wrt> = params.ids().map(Wrt::Param).collect();
    targets.extend((0..inputs.len()).map(Wrt::Input));
    for wrt in targets {
        let (tensor, analytic) = match wrt {
            Wrt::Param(id) => (params.get(id), grads.get(id)),
            Wrt::Input(i) => (&inputs[i], Some(&input_grads[i])),
        };
        let shape = b.shape(tensor);
        let original = b.download(tensor).map_err(|e| e.to_string())?;
        let analytic = match analytic {
            Some(g) => b.download(g).map_err(|e| e.to_string())?,
            None => vec![0.0; original.len()],
        };
        for e in 0..original.len() {
            let mut eval = |delta: f32| {
                let mut data = original.clone();
                data[e] += delta;
                let t = b.upload(shape, &data);
                match wrt {
                    Wrt::Param(id) => *params.get_mut(id) = t,
                    Wrt::Input(i) => inputs[i] = t,
                }
                objective(b, params, inputs)
            };
            let numeric = (eval(cfg.eps) - eval(-cfg.eps)) / (2.0 * cfg.eps as f64);
            let restored = b.upload(shape, &original);
            match wrt {
                Wrt::Param(id) => *params.get_mut(id) = restored,
                Wrt::Input(i) => inputs[i] = restored,
            }
            let a = analytic[e] as f64;
            if (a - numeric).abs() > cfg.abs + cfg.rel * a.abs().max(numeric.abs()) {
                let name = match wrt {
                    Wrt::Param(id) => params.name(id).to_string(),
                    Wrt::Input(i) => format!("input {i}"),
                };
                return Err(format!(
                    "{name}[{e}] (shape {shape:?}): analytic {a:.6}, numeric {numeric:.6}"
                ));
            }
        }
    }
    Ok(())
}

/// Host-side `sum(w * y)`, the linear objective used to test a module's backward with
/// `dy = w`.
///
/// # Panics
/// If the device fails or the lengths differ.
pub fn weighted_sum<B: Backend>(b: &B, y: &B::Tensor, w: &[f32]) -> f64 {
    let y = b.download(y).expect("download in a gradient check");
    assert_eq!(y.len(), w.len(), "weighted_sum: lengths differ");
    y.iter().zip(w).map(|(&y, &w)| y as f64 * w as f64).sum()
}

/// Checks a [`Module`]'s backward (input and parameter gradients) on input `x`, with the
/// objective `sum(w * module(x))` for fixed random weights `w` drawn from `seed`. Every
/// forward pass gets a training context seeded with `seed`, so stochastic layers (dropout)
/// draw the same randomness each time.
///
/// # Errors
/// As [`check`].
pub fn check_module<B: Backend, M: Module<B>>(
    b: &B,
    module: &M,
    params: &mut ParamStore<B>,
    x: B::Tensor,
    seed: u64,
    cfg: &GradCheck,
) -> Result<(), String> {
    let (y, _) = module.forward(b, params, &x, &mut Ctx::train(seed));
    let shape = b.shape(&y);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9);
    let w: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let dy = b.upload(shape, &w);
    let mut inputs = [x];
    check(
        b,
        params,
        &mut inputs,
        cfg,
        |b, p, xs| {
            weighted_sum(
                b,
                &module.forward(b, p, &xs[0], &mut Ctx::train(seed)).0,
                &w,
            )
        },
        |b, p, xs| {
            let (_, cache) = module.forward(b, p, &xs[0], &mut Ctx::train(seed));
            let mut g = Grads::new();
            let dx = module.backward(b, p, cache, &dy, &mut g);
            (g, vec![dx])
        },
    )
}
