//! Uniformly random routing: every selection is `K` distinct modules drawn uniformly at
//! random, fresh at every step; the modules are trained on them and the controller is left
//! untrained. It is the baseline that shows what learned routing adds: its modules see
//! random shares of the data, so each learns the same average map.

use modula_modular::{ControllerOutput, Selection};
use modula_tensor::Backend;
use rand::seq::index;

use super::{Algorithm, Gradient, StepContext, routed_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::model::{Model, Routes};
use crate::task::Batch;

/// Uniformly random routing (stateless).
#[derive(Debug)]
pub struct Uniform;

impl<B: Backend, M: Model<B>> Algorithm<B, M> for Uniform {
    fn algo(&self) -> Algo {
        Algo::Uniform
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, TrainError> {
        let (rng, pass) = s.split();
        let b = pass.backend;
        let mut route = |_: usize, out: &ControllerOutput<B>| {
            let rows = out.rows(b);
            let picks = (0..rows)
                .flat_map(|_| index::sample(rng, out.modules, out.k).into_iter())
                .map(|m| m as u32)
                .collect();
            Ok(Selection::new(out.k, picks))
        };
        routed_gradient(pass, batch, Routes::Chosen(&mut route), |_| Ok(Vec::new()))
    }
}
