//! Generalized (Viterbi) EM: an assignment table `a*` of every training example's selection,
//! E-steps that replace stored assignments by better-scoring candidates
//! ([`crate::estep`]), and M-steps that train the modules and the controllers on the stored
//! assignments by gradient descent on `-mean log p(y | ., a*) - mean log p(a* | .)`. Along
//! the greedy path ([`EPath::Greedy`], sequence models), the stored assignments are the
//! controller's targets only and the modules run the controller's greedy routes.

use std::ops::Range;

use modula_modular::ControllerOutput;
use modula_nn::{Checkpoint, StoredTensor};
use modula_tensor::{Backend, BackendError};
use rand_chacha::ChaCha8Rng;

use super::{Algorithm, Gradient, StepContext, routed_gradient};
use crate::config::{Algo, EPath, EStepSettings, TrainSettings};
use crate::error::TrainError;
use crate::estep::{self, EStats, stored_selections};
use crate::meta::MetaReader;
use crate::model::{Model, Routes};
use crate::table::AssignmentTable;
use crate::task::Batch;

/// EM's state: the table, which keys an E-step has visited, and the settings of its steps.
#[derive(Debug)]
pub struct Em {
    table: AssignmentTable,
    /// Whether any E-step has visited each key yet (a key never visited still holds its random
    /// initial assignment).
    visited: Vec<bool>,
    /// How many keys are visited.
    covered: usize,
    estep: EStepSettings,
    ctrl_weight: f32,
    ctrl_mask: bool,
}

impl Em {
    /// EM starting from `table` (uniformly random at the start of a run), with the E-step and
    /// controller-loss settings of `settings`.
    pub fn new(table: AssignmentTable, settings: &TrainSettings) -> Self {
        Em {
            visited: vec![false; table.examples()],
            covered: 0,
            table,
            estep: settings.estep,
            ctrl_weight: settings.ctrl_weight,
            ctrl_mask: settings.ctrl_mask,
        }
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
    ) -> Result<Gradient<B>, TrainError> {
        let stored = stored_selections(&self.table, batch);
        let (_, pass) = s.split();
        let (weight, mask, visited) = (self.ctrl_weight, self.ctrl_mask, &self.visited);
        let b = pass.backend;
        let mut greedy = |_: usize, out: &ControllerOutput<B>| out.greedy(b);
        let routes = match self.estep.path {
            EPath::Best => Routes::Stored(&stored),
            EPath::Greedy => Routes::Guided {
                targets: &stored,
                route: &mut greedy,
            },
        };
        routed_gradient(pass, batch, routes, |out| {
            let d = -weight / out.nll.len() as f32;
            if !mask {
                return Ok(vec![d; out.log_p.len()]);
            }
            let first = self.table.keys().start;
            Ok(batch
                .row_keys(out.log_p.len())
                .iter()
                .map(|&key| {
                    if visited[key as usize - first] {
                        d
                    } else {
                        0.0
                    }
                })
                .collect())
        })
    }

    fn table(&self) -> Option<&AssignmentTable> {
        Some(&self.table)
    }

    fn has_e_step(&self) -> bool {
        true
    }

    fn visited(&self) -> Option<usize> {
        Some(self.covered)
    }

    fn grow(&mut self, rows: usize, rng: &mut ChaCha8Rng) {
        let added = rows.saturating_sub(self.table.examples());
        self.table.grow(added, rng);
        self.visited.resize(self.table.examples(), false);
    }

    fn e_step(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Option<Result<EStats, BackendError>> {
        let stats = estep::e_step(
            s.model,
            s.backend,
            s.params,
            batch,
            &mut self.table,
            &self.estep,
            s.rng,
            s.ctx,
        );
        let first = self.table.keys().start;
        Some(stats.inspect(|_| {
            for group in &batch.groups {
                for &key in &group.keys {
                    let seen = &mut self.visited[key as usize - first];
                    self.covered += usize::from(!*seen);
                    *seen = true;
                }
            }
        }))
    }

    fn keep_shard(&mut self, _model: &M, keys: Range<usize>) -> bool {
        let rows = keys.start - self.table.keys().start..keys.end - self.table.keys().start;
        self.table = self.table.shard(keys);
        self.visited = self.visited[rows].to_vec();
        self.covered = self.visited.iter().filter(|&&v| v).count();
        true
    }

    fn sharded_state(&self) -> Vec<String> {
        let layers = self.table.layers().len();
        std::iter::once("em.visited".to_string())
            .chain((0..layers).map(|l| format!("em.assignments.{l}")))
            .collect()
    }

    fn save(&self, ck: &mut Checkpoint) {
        ck.insert(
            "em.visited",
            StoredTensor::u16(
                vec![self.visited.len(), 1],
                self.visited.iter().map(|&v| u16::from(v)).collect(),
            ),
        );
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
        // A table that grew during the run (a continual run's later tasks) has more rows than
        // a fresh one; fewer rows than the task's examples is another run's table.
        let rows = match meta.checkpoint().get("em.assignments.0") {
            Some(stored) => stored.shape().first().copied().unwrap_or(0),
            None => t.examples(),
        };
        if rows < t.examples() {
            return Err(meta.mismatch(format!(
                "em.assignments.0 has {rows} rows, fewer than the task's {} training examples",
                t.examples()
            )));
        }
        let mut layers = Vec::new();
        for (l, layer) in t.layers().iter().enumerate() {
            let data = meta
                .checkpoint()
                .u16(&format!("em.assignments.{l}"), Some(&[rows, layer.k()]))?;
            layers.push((layer.modules(), layer.k(), data.to_vec()));
        }
        self.table = AssignmentTable::from_raw(rows, layers).map_err(|p| meta.mismatch(p))?;
        self.visited.resize(rows, false);
        // Checkpoints written before coverage was recorded lack the tensor: their coverage
        // starts again from nothing visited.
        if meta.checkpoint().get("em.visited").is_none() {
            self.visited.iter_mut().for_each(|v| *v = false);
            self.covered = 0;
            return Ok(());
        }
        let visited = meta
            .checkpoint()
            .u16("em.visited", Some(&[self.visited.len(), 1]))?;
        if let Some(bad) = visited.iter().find(|&&v| v > 1) {
            return Err(meta.mismatch(format!("em.visited holds {bad}; each entry must be 0 or 1")));
        }
        self.visited = visited.iter().map(|&v| v == 1).collect();
        self.covered = self.visited.iter().filter(|&&v| v).count();
        Ok(())
    }
}
