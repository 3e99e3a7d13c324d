#![doc = include_str!("../README.md")]

pub mod continual;
pub mod images;
pub mod lm;
pub mod toy;

pub use images::{
    DispatchTiming, IMAGE_TASKS, ImageData, ImageEval, ImageTask, ImageTaskConfig,
    ImageTrainConfig, Split,
};
pub use lm::{LmData, LmEval, LmFiltered, LmTask, LmTrainConfig, TextConfig, upcycle};
pub use toy::{ToyEval, ToyTask, ToyTrainConfig};

use modula_em::models::{FeedForward, MlpOutput};
use modula_em::{Batch, EStepDue, Group, Target};
use modula_modular::ControllerOutput;
use modula_nn::{Ctx, ParamStore};
use modula_tensor::{Backend, BackendError};

/// A batch of a feed-forward task (toy or image): one example per row, keyed by `keys` (its
/// position in the training set, EM's table row) in the selection group of each of the
/// network's `layers` modular layers.
pub(crate) fn keyed_batch<I>(input: I, keys: Vec<u32>, layers: usize) -> Batch<I> {
    let examples = keys.len();
    let groups = (0..layers)
        .map(|layer| Group {
            layer,
            keys: keys.clone(),
        })
        .collect();
    Batch {
        input,
        groups,
        examples,
        units: examples,
    }
}

/// The feed-forward tasks' E-step rule: iteration `step` is an E-step instead of a gradient
/// step when `step % e_every == 0`.
pub(crate) fn e_step_every(step: u64, e_every: usize) -> EStepDue {
    if step.is_multiple_of(e_every as u64) {
        EStepDue::Instead
    } else {
        EStepDue::No
    }
}

/// The forward pass every evaluation of a feed-forward task runs: greedy routes (each slot's
/// argmax, layer by layer) in evaluation mode, with the controllers' statistics and the hidden
/// activations when asked.
///
/// # Errors
/// Device failures.
pub(crate) fn greedy_forward<B: Backend, M: FeedForward<B>>(
    b: &B,
    model: &M,
    params: &ParamStore<B>,
    x: &B::Tensor,
    target: &Target<B>,
    stats: bool,
    hidden: bool,
) -> Result<MlpOutput<B, M::Cache>, BackendError> {
    let mut route = |_: usize, out: &ControllerOutput<B>| out.greedy(b);
    model.forward_tensors(
        b,
        params,
        x,
        target,
        &mut route,
        stats,
        hidden,
        &mut Ctx::eval(),
    )
}

/// The class among `candidates` whose logit in `row` is the largest, ties to the lower class.
///
/// # Panics
/// If there is no candidate.
pub(crate) fn predicted_class(row: &[f32], candidates: impl Iterator<Item = usize>) -> usize {
    candidates
        .max_by(|&a, &c| row[a].total_cmp(&row[c]).then(c.cmp(&a)))
        .expect("at least one class")
}
