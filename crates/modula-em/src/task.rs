//! What a task gives the trainer: its model, its mini-batches with stable example keys, when
//! EM's E-step runs, and the state it carries between batches. The data sets, evaluations and
//! metrics of concrete tasks live in `modula-tasks`.

use std::ops::Range;

use modula_nn::Checkpoint;
use modula_tensor::{Backend, BackendError};

use crate::error::TrainError;
use crate::model::Model;

/// One group of a batch's selections (a modular layer, or a time step) and the assignment-table
/// keys of its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The table layer the group's selections are stored in.
    pub layer: usize,
    /// The stable key (global example index, or token position) of each of the group's rows.
    pub keys: Vec<u32>,
}

/// A mini-batch: the model's input and the keys of its selections.
#[derive(Debug)]
pub struct Batch<I> {
    /// What the model's forward pass reads.
    pub input: I,
    /// The groups of the batch's selections, in the order the model routes them.
    pub groups: Vec<Group>,
    /// Examples (feed-forward) or streams (recurrent) in the batch: the E-step's candidates
    /// are per example.
    pub examples: usize,
    /// Training units the batch counts for throughput (examples, or tokens).
    pub units: usize,
}

impl<I> Batch<I> {
    /// The table key of each of `rows` rows of a forward pass's per-row terms: when the groups
    /// split the rows among them (a recurrent window, one group per time step), the groups'
    /// keys in order; otherwise (a feed-forward network, whose groups are its layers over the
    /// same examples) the first group's keys.
    ///
    /// # Panics
    /// If the rows match neither shape.
    pub fn row_keys(&self, rows: usize) -> Vec<u32> {
        let split: usize = self.groups.iter().map(|g| g.keys.len()).sum();
        if self.groups.len() > 1 && split == rows {
            self.groups
                .iter()
                .flat_map(|g| g.keys.iter().copied())
                .collect()
        } else {
            let first = self.groups.first().map_or(&[][..], |g| &g.keys[..]);
            assert_eq!(
                first.len(),
                rows,
                "row_keys: {rows} rows do not match the groups"
            );
            first.to_vec()
        }
    }
}

/// Whether, and how, an iteration runs EM's E-step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EStepDue {
    /// No E-step this iteration.
    No,
    /// The iteration is an E-step instead of a gradient step (its draws come from the
    /// iteration's own random stream).
    Instead,
    /// An E-step on the same batch precedes the iteration's gradient step (its draws come from
    /// a stream of their own, apart from the gradient step's).
    Before,
}

/// A training task: the source of batches for the [`crate::Trainer`].
pub trait Task<B: Backend> {
    /// The network the task trains.
    type Model: Model<B>;

    /// Rows of EM's assignment table (training examples, or training token positions).
    fn table_rows(&self) -> usize;

    /// How many of the table's keys batches use (a corpus's last token of each stream is
    /// only ever a target): the denominator of an E-step's coverage.
    fn trained_keys(&self) -> usize {
        self.table_rows()
    }

    /// Iterations per pass over the training split.
    fn steps_per_epoch(&self) -> u64;

    /// The batch of iteration `step`.
    fn batch(&mut self, b: &B, step: u64) -> Batch<<Self::Model as Model<B>>::Input>;

    /// Whether iteration `step` runs an E-step, for an E-step period of `e_every`.
    fn e_step_due(&self, step: u64, e_every: usize) -> EStepDue;

    /// The batch the E-step of iteration `step` runs on when it is not the iteration's
    /// training batch (`None`, the default: the same batch). A continual run trains on
    /// replayed examples of earlier tasks beside the current task's, and E-steps only the
    /// current task's.
    fn e_step_batch(
        &mut self,
        _b: &B,
        _step: u64,
    ) -> Option<Batch<<Self::Model as Model<B>>::Input>> {
        None
    }

    /// Restricts every later batch (and E-step batch) to the examples whose keys lie in
    /// `keys`, the block a data-parallel rank owns, keeping each batch's order and keys.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] from tasks that cannot be sharded (the default: tasks
    /// whose examples grow during a run, or whose batches are sequences).
    fn shard(&mut self, _keys: Range<usize>) -> Result<(), TrainError> {
        Err(TrainError::Distributed(
            "this task cannot be trained data-parallel yet; only the toy and image tasks can"
                .into(),
        ))
    }

    /// Called after every iteration with the state its forward pass left (`None` after an
    /// E-step-only iteration).
    fn advance(&mut self, b: &B, carry: Option<B::Tensor>);

    /// Writes the task's own resumable state (a carried hidden state, a cursor) into `ck`.
    ///
    /// # Errors
    /// A device failure while downloading a tensor.
    fn save(&self, b: &B, ck: &mut Checkpoint) -> Result<(), BackendError>;

    /// Reads back what [`Task::save`] wrote.
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] or a checkpoint error when the state does not fit the task.
    fn restore(&mut self, b: &B, ck: &Checkpoint) -> Result<(), TrainError>;
}
