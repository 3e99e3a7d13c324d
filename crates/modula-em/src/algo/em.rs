//! Generalized (Viterbi) EM: an assignment table `a*` of every training example's selection,
//! E-steps that replace stored assignments by better-scoring candidates
//! ([`crate::estep`]), and M-steps that train the modules and the controllers on the stored
//! assignments by gradient descent on `-mean log p(y | ., a*) - mean log p(a* | .)`.

use modula_nn::{Checkpoint, StoredTensor};
use modula_tensor::{Backend, BackendError};

use super::{Algorithm, Gradient, StepContext, routed_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::estep::{self, EStats, stored_selections};
use crate::meta::MetaReader;
use crate::model::{Model, Routes};
use crate::table::AssignmentTable;
use crate::task::Batch;

/// EM's state: the table and the E-step's candidate count.
#[derive(Debug)]
pub struct Em {
    table: AssignmentTable,
    samples: usize,
}

impl Em {
    /// EM starting from `table` (uniformly random at the start of a run), with `samples`
    /// candidates per example in an E-step.
    pub fn new(table: AssignmentTable, samples: usize) -> Self {
        Em { table, samples }
    }
}

impl<B: Backend, M: Model<B>> Algorithm<B, M> for Em {
    fn algo(&self) -> Algo {
        Algo::Em
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, BackendError> {
        let stored = stored_selections(&self.table, batch);
        let (_, pass) = s.split();
        routed_gradient(pass, batch, Routes::Stored(&stored), |out| {
            vec![-1.0 / out.nll.len() as f32; out.log_p.len()]
        })
    }

    fn table(&self) -> Option<&AssignmentTable> {
        Some(&self.table)
    }

    fn has_e_step(&self) -> bool {
        true
    }

    fn e_step(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Option<Result<EStats, BackendError>> {
        Some(estep::e_step(
            s.model,
            s.backend,
            s.params,
            batch,
            &mut self.table,
            self.samples,
            s.rng,
            s.ctx,
        ))
    }

    fn save(&self, ck: &mut Checkpoint) {
        for (l, layer) in self.table.layers().iter().enumerate() {
            ck.insert(
                format!("em.assignments.{l}"),
                StoredTensor::u16(
                    vec![self.table.examples(), layer.k()],
                    layer.as_slice().to_vec(),
                ),
            );
        }
    }

    fn restore(&mut self, meta: &MetaReader<'_>) -> Result<(), TrainError> {
        let t = &self.table;
        let mut layers = Vec::new();
        for (l, layer) in t.layers().iter().enumerate() {
            let data = meta.checkpoint().u16(
                &format!("em.assignments.{l}"),
                Some(&[t.examples(), layer.k()]),
            )?;
            layers.push((layer.modules(), layer.k(), data.to_vec()));
        }
        self.table =
            AssignmentTable::from_raw(t.examples(), layers).map_err(|p| meta.mismatch(p))?;
        Ok(())
    }
}
