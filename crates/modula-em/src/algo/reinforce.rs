//! REINFORCE: selections sampled from the controllers, the modules trained on
//! `-mean log p(y | ., a)` and the controllers by the score-function gradient
//! `-(R - baseline) log p(a | .)`, with reward `R = log p(y | ., a)` summed over an episode
//! and a moving-average baseline.

use std::ops::Range;

use modula_modular::ControllerOutput;
use modula_tensor::Backend;
use rand::Rng;

use super::{Algorithm, Gradient, StepContext, routed_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::estep::{example_streams, propose_per_example};
use crate::meta::MetaReader;
use crate::model::{Episodes, Model, Routes};
use crate::replicas::Replicas;
use crate::task::Batch;

/// Metadata key of the baseline in checkpoints.
const META_BASELINE: &str = "baseline";

/// REINFORCE's state: the reward baseline and its decay.
#[derive(Debug)]
pub struct Reinforce {
    baseline: Option<f64>,
    decay: f64,
}

impl Reinforce {
    /// REINFORCE with a baseline that moves towards each batch's mean reward by `1 - decay`.
    pub fn new(decay: f32) -> Self {
        Reinforce {
            baseline: None,
            decay: decay as f64,
        }
    }

    /// The current baseline (`None` before the first batch).
    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// Moves the baseline towards `mean_reward`, the batch's mean reward, and returns the
    /// baseline the batch's rewards are centred on (the one before the move). The first
    /// batch's mean reward starts the baseline, so early updates are centred.
    fn advance(&mut self, mean_reward: f64) -> f64 {
        let base = *self.baseline.get_or_insert(mean_reward);
        self.baseline = Some(self.decay * base + (1.0 - self.decay) * mean_reward);
        base
    }
}

/// The mean reward of the whole batch from this rank's `sum` of its `episodes` episodes'
/// rewards: the sums over the ranks of a data-parallel run (the same bits on every rank, so
/// every rank moves its baseline alike), or the rank's own in one process; `None` for a
/// batch without episodes, which leaves the baseline where it is.
///
/// # Errors
/// A failed collective.
fn mean_reward<B: Backend>(
    replicas: Option<&dyn Replicas<B>>,
    sum: f64,
    episodes: usize,
) -> Result<Option<f64>, TrainError> {
    let mut v = [sum, episodes as f64];
    if let Some(r) = replicas {
        r.sum(&mut v)?;
    }
    Ok((v[1] > 0.0).then(|| v[0] / v[1]))
}

impl<B: Backend, M: Model<B>> Algorithm<B, M> for Reinforce {
    fn algo(&self) -> Algo {
        Algo::Reinforce
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, TrainError> {
        let per_example = s.model.samples_per_example();
        let (rng, pass) = s.split();
        let (b, replicas) = (pass.backend, pass.replicas);
        // A feed-forward network draws each example's selections from a stream named by its
        // key (and one draw of the iteration's stream), ancestrally through the layers; a
        // sequence model draws its windows' in batch order from the iteration's stream.
        let mut streams = per_example.then(|| {
            let keys = batch.groups.first().map_or(&[][..], |g| &g.keys[..]);
            example_streams(rng.random(), 0, keys)
        });
        let mut sample = |_: usize, c: &ControllerOutput<B>| match streams.as_mut() {
            Some(streams) => propose_per_example(b, c, 0.0, streams),
            None => c.sample(b, rng),
        };
        routed_gradient(pass, batch, Routes::Chosen(&mut sample), |out| {
            let rows = out.nll.len();
            let episodes = match out.episodes {
                Episodes::Rows => rows,
                Episodes::Streams(n) => n,
            };
            let mut reward = vec![0.0f64; episodes];
            for (j, &l) in out.nll.iter().enumerate() {
                reward[j % episodes] -= l as f64;
            }
            // A batch has at least one episode here (this rank's own).
            let mean_r = mean_reward(replicas, reward.iter().sum::<f64>(), episodes)?;
            let base = self.advance(mean_r.unwrap_or(0.0));
            // Both forms weight by 1 / rows; they are kept apart because they round
            // differently and the recorded results (tests/golden) follow each.
            let scale = 1.0 / rows as f32;
            Ok((0..out.log_p.len())
                .map(|j| match out.episodes {
                    Episodes::Rows => (-(reward[j] - base) / rows as f64) as f32,
                    Episodes::Streams(_) => (-(reward[j % episodes] - base) * scale as f64) as f32,
                })
                .collect())
        })
    }

    /// A rank without examples adds no reward to the batch's mean, and moves its baseline to
    /// the same value as the others.
    fn idle_gradient(&mut self, replicas: &dyn Replicas<B>) -> Result<(), TrainError> {
        if let Some(mean_r) = mean_reward(Some(replicas), 0.0, 0)? {
            self.advance(mean_r);
        }
        Ok(())
    }

    /// Nothing is kept per example; the baseline follows the whole batch's mean reward, and a
    /// rank's loss is a mean over its examples, so a rank's share of the batch contributes its
    /// weighted part of the global gradient. A model that samples in batch order would draw
    /// on a rank what one process does not, so it cannot be sharded.
    fn keep_shard(&mut self, model: &M, _keys: Range<usize>) -> bool {
        model.samples_per_example()
    }

    fn save(&self, ck: &mut modula_nn::Checkpoint) {
        let v = self
            .baseline
            .map_or("none".to_string(), |v| format!("{v:?}"));
        ck.metadata.insert(META_BASELINE.into(), v);
    }

    fn restore(&mut self, meta: &MetaReader<'_>) -> Result<(), TrainError> {
        self.baseline = match meta.get(META_BASELINE)?.as_str() {
            "none" => None,
            v => Some(v.parse::<f64>().map_err(|_| {
                meta.mismatch(format!("metadata `{META_BASELINE}` is not a number"))
            })?),
        };
        Ok(())
    }
}
