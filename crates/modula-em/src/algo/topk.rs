//! Noisy top-k gating (Shazeer et al. 2017): the network's own gate picks and weights `k`
//! modules per input; one gradient step on `-mean log p(y | ., a)` plus the gate's importance
//! loss trains modules and gate together. The gated network itself is built by the task's
//! model for [`crate::Algo::Topk`].

use modula_tensor::Backend;

use super::{Algorithm, Gradient, StepContext, greedy_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::model::Model;
use crate::task::Batch;

/// Noisy top-k gating (stateless: the gate is part of the network).
#[derive(Debug)]
pub struct TopK;

impl<B: Backend, M: Model<B>> Algorithm<B, M> for TopK {
    fn algo(&self) -> Algo {
        Algo::Topk
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, TrainError> {
        greedy_gradient(s, batch)
    }
}
