//! Dense baselines: a network without modules to choose (one module per layer, matched to the
//! modular network in compute or in parameters, see [`crate::DenseMatch`]), trained by
//! gradient descent on `-mean log p(y | .)`. The network is built by the task's model for
//! [`crate::Algo::Dense`].

use std::ops::Range;

use modula_tensor::Backend;

use super::{Algorithm, Gradient, StepContext, greedy_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::model::Model;
use crate::task::Batch;

/// The dense baseline (stateless).
#[derive(Debug)]
pub struct Dense;

impl<B: Backend, M: Model<B>> Algorithm<B, M> for Dense {
    fn algo(&self) -> Algo {
        Algo::Dense
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, TrainError> {
        greedy_gradient(s, batch)
    }

    /// Nothing is kept per example, and its loss is a mean over examples, so a rank's share
    /// of the batch contributes its weighted part of the global gradient.
    fn keep_shard(&mut self, _model: &M, _keys: Range<usize>) -> bool {
        true
    }
}
