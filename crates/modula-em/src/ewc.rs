//! Elastic weight consolidation (Kirkpatrick et al., PNAS 2017): after each task of a
//! continual run, the diagonal of the Fisher information `F_t` at the task's final parameters
//! `theta*_t` anchors them, and later training pays
//! `lambda / 2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`.
//!
//! The tasks' terms are kept summed, `A = sum_t F_t`, `B = sum_t F_t theta*_t` and
//! `C = sum_t F_t theta*_t^2`, so that the penalty is `lambda / 2 * sum_i (A_i theta_i^2 -
//! 2 B_i theta_i + C_i)` and its gradient `lambda * (A theta - B)`, whatever the number of
//! tasks: memory and time per step stay those of one task.

use modula_modular::ControllerOutput;
use modula_nn::{Ctx, Grads, ParamId, ParamStore};
use modula_tensor::{Backend, BackendError};

use crate::model::{Model, Routes};
use crate::trainer::Penalty;

/// The summed anchors of one parameter tensor.
#[derive(Clone, Debug, PartialEq)]
struct Anchor {
    id: ParamId,
    shape: [usize; 2],
    /// `sum_t F_t`.
    fisher: Vec<f64>,
    /// `sum_t F_t theta*_t`.
    pull: Vec<f64>,
    /// `sum_t sum_i F_t,i theta*_t,i^2` over the tensor.
    constant: f64,
}

/// EWC's penalty over the tasks consolidated so far (none at first: a zero penalty).
#[derive(Clone, Debug, PartialEq)]
pub struct Ewc {
    lambda: f64,
    anchors: Vec<Anchor>,
}

impl Ewc {
    /// A penalty of strength `lambda` with no task consolidated yet.
    pub fn new(lambda: f64) -> Self {
        Ewc {
            lambda,
            anchors: Vec::new(),
        }
    }

    /// Tasks' terms are summed in; whether any was.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Adds a finished task's term: `fisher` (one host vector per parameter of `params`, in
    /// `params.ids()` order, as [`fisher_diagonal`] returns them) at the current parameters.
    ///
    /// # Errors
    /// A device failure while downloading the parameters.
    ///
    /// # Panics
    /// If `fisher` does not have one vector of the right length per parameter.
    #[track_caller]
    pub fn consolidate<B: Backend>(
        &mut self,
        b: &B,
        params: &ParamStore<B>,
        fisher: &[Vec<f32>],
    ) -> Result<(), BackendError> {
        let ids: Vec<ParamId> = params.ids().collect();
        assert_eq!(ids.len(), fisher.len(), "one Fisher vector per parameter");
        if self.anchors.is_empty() {
            self.anchors = ids
                .iter()
                .map(|&id| {
                    let shape = b.shape(params.get(id));
                    let n = shape[0] * shape[1];
                    Anchor {
                        id,
                        shape,
                        fisher: vec![0.0; n],
                        pull: vec![0.0; n],
                        constant: 0.0,
                    }
                })
                .collect();
        }
        for (anchor, f) in self.anchors.iter_mut().zip(fisher) {
            let theta = b.download(params.get(anchor.id))?;
            assert_eq!(theta.len(), f.len(), "Fisher vector of the wrong length");
            for ((a, p), (&fi, &t)) in anchor
                .fisher
                .iter_mut()
                .zip(anchor.pull.iter_mut())
                .zip(f.iter().zip(&theta))
            {
                let (fi, t) = (fi as f64, t as f64);
                *a += fi;
                *p += fi * t;
                anchor.constant += fi * t * t;
            }
        }
        Ok(())
    }

    /// The penalty at host parameters `theta` (one vector per anchored parameter, in order).
    pub fn value(&self, theta: &[Vec<f32>]) -> f64 {
        let sum: f64 = self
            .anchors
            .iter()
            .zip(theta)
            .map(|(a, t)| {
                let quad: f64 = a
                    .fisher
                    .iter()
                    .zip(&a.pull)
                    .zip(t)
                    .map(|((&f, &p), &x)| {
                        let x = x as f64;
                        f * x * x - 2.0 * p * x
                    })
                    .sum();
                quad + a.constant
            })
            .sum();
        0.5 * self.lambda * sum
    }

    /// The penalty's gradient at host parameters `theta`: `lambda * (A theta - B)`.
    pub fn gradient(&self, theta: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.anchors
            .iter()
            .zip(theta)
            .map(|(a, t)| {
                a.fisher
                    .iter()
                    .zip(&a.pull)
                    .zip(t)
                    .map(|((&f, &p), &x)| (self.lambda * (f * x as f64 - p)) as f32)
                    .collect()
            })
            .collect()
    }
}

impl<B: Backend> Penalty<B> for Ewc {
    fn add_gradient(
        &self,
        b: &B,
        params: &ParamStore<B>,
        grads: &mut Grads<B>,
    ) -> Result<f64, BackendError> {
        if self.anchors.is_empty() {
            return Ok(0.0);
        }
        let theta = self
            .anchors
            .iter()
            .map(|a| b.download(params.get(a.id)))
            .collect::<Result<Vec<_>, _>>()?;
        for (a, g) in self.anchors.iter().zip(self.gradient(&theta)) {
            grads.accumulate(b, a.id, &b.upload(a.shape, &g));
        }
        Ok(self.value(&theta))
    }
}

/// The empirical Fisher information's diagonal of `model` at `params`: the mean over `inputs`
/// of the squared gradient of each input's `-log p(y | x, a)` (each input one example, the
/// network routed greedily, the controller's term left out), one host vector per parameter in
/// `params.ids()` order.
///
/// # Errors
/// A device failure.
pub fn fisher_diagonal<B: Backend, M: Model<B>>(
    model: &M,
    b: &B,
    params: &ParamStore<B>,
    inputs: &[M::Input],
) -> Result<Vec<Vec<f32>>, BackendError> {
    let ids: Vec<ParamId> = params.ids().collect();
    let mut sums: Vec<Vec<f32>> = ids
        .iter()
        .map(|&id| {
            let [r, c] = b.shape(params.get(id));
            vec![0.0; r * c]
        })
        .collect();
    let mut grads = Grads::new();
    for input in inputs {
        grads.reset();
        let mut route = |_: usize, out: &ControllerOutput<B>| out.greedy(b);
        let out = model.forward(
            b,
            params,
            input,
            Routes::Chosen(&mut route),
            false,
            &mut Ctx::eval(),
        )?;
        model.backward(b, params, out.cache, 1.0, &[], &mut grads)?;
        for (sum, &id) in sums.iter_mut().zip(&ids) {
            // A parameter the example's route did not reach has no gradient entry.
            if let Some(g) = grads.get(id) {
                for (s, g) in sum.iter_mut().zip(b.download(g)?) {
                    *s += g * g;
                }
            }
        }
    }
    let n = inputs.len().max(1) as f32;
    sums.iter_mut().flatten().for_each(|s| *s /= n);
    Ok(sums)
}
