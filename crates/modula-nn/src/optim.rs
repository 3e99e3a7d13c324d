//! Optimisers: SGD with momentum and Adam, over every parameter of a [`ParamStore`].

use modula_tensor::{AdamStep, Backend, SgdStep};

use crate::param::{Grads, ParamId, ParamStore};

/// Anything that updates parameters from gradients.
pub trait Optimizer<B: Backend> {
    /// Applies one update; parameters without a gradient are left untouched.
    fn step(&mut self, backend: &B, params: &mut ParamStore<B>, grads: &Grads<B>);
}

/// Per-parameter optimiser state, created lazily with the parameter's shape.
fn state<'s, B: Backend>(
    slots: &'s mut Vec<Option<Vec<B::Tensor>>>,
    i: usize,
    b: &B,
    t: &B::Tensor,
    n: usize,
) -> &'s mut Vec<B::Tensor> {
    if slots.len() <= i {
        slots.resize_with(i + 1, || None);
    }
    slots[i].get_or_insert_with(|| (0..n).map(|_| b.zeros(b.shape(t))).collect())
}

/// Stochastic gradient descent with heavy-ball momentum and optional L2 weight decay.
#[derive(Debug)]
pub struct Sgd<B: Backend> {
    /// Hyper-parameters of each step.
    pub hyper: SgdStep,
    velocity: Vec<Option<Vec<B::Tensor>>>,
}

impl<B: Backend> Sgd<B> {
    /// SGD with learning rate `lr` and `momentum` (0 for plain SGD).
    pub fn new(lr: f32, momentum: f32) -> Self {
        Sgd {
            hyper: SgdStep {
                lr,
                momentum,
                weight_decay: 0.0,
            },
            velocity: Vec::new(),
        }
    }
}

impl<B: Backend> Optimizer<B> for Sgd<B> {
    fn step(&mut self, b: &B, params: &mut ParamStore<B>, grads: &Grads<B>) {
        for (id, g) in grads.iter() {
            let p = params.get_mut(id);
            let vel = state(&mut self.velocity, id.index(), b, p, 1);
            b.sgd_step(p, g, &mut vel[0], &self.hyper);
        }
    }
}

/// Adam (Kingma and Ba), with optional decoupled weight decay (AdamW).
#[derive(Debug)]
pub struct Adam<B: Backend> {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    t: u64,
    moments: Vec<Option<Vec<B::Tensor>>>,
}

impl<B: Backend> Adam<B> {
    /// Adam with learning rate `lr` and the usual defaults (0.9, 0.999, 1e-8).
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            t: 0,
            moments: Vec::new(),
        }
    }

    /// Number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The moment estimates `[m, v]` of every parameter that has them, for checkpointing.
    pub fn moments(&self) -> impl Iterator<Item = (ParamId, &[B::Tensor])> {
        self.moments
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_deref().map(|s| (ParamId(i as u32), s)))
    }

    /// Restores the step counter and moments saved from [`Adam::moments`].
    pub fn restore(&mut self, t: u64, moments: Vec<(ParamId, [B::Tensor; 2])>) {
        self.t = t;
        self.moments.clear();
        for (id, [m, v]) in moments {
            let i = id.index();
            if self.moments.len() <= i {
                self.moments.resize_with(i + 1, || None);
            }
            self.moments[i] = Some(vec![m, v]);
        }
    }
}

impl<B: Backend> Optimizer<B> for Adam<B> {
    fn step(&mut self, b: &B, params: &mut ParamStore<B>, grads: &Grads<B>) {
        self.t += 1;
        let hyper = AdamStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            t: self.t,
        };
        for (id, g) in grads.iter() {
            let p = params.get_mut(id);
            let mv = state(&mut self.moments, id.index(), b, p, 2);
            let (m, v) = mv.split_at_mut(1);
            b.adam_step(p, g, &mut m[0], &mut v[0], &hyper);
        }
    }
}
