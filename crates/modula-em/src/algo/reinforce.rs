//! REINFORCE: selections sampled from the controllers, the modules trained on
//! `-mean log p(y | ., a)` and the controllers by the score-function gradient
//! `-(R - baseline) log p(a | .)`, with reward `R = log p(y | ., a)` summed over an episode
//! and a moving-average baseline.

use modula_tensor::{Backend, BackendError};

use super::{Algorithm, Gradient, StepContext, routed_gradient};
use crate::config::Algo;
use crate::error::TrainError;
use crate::meta::MetaReader;
use crate::model::{Episodes, Model, Routes};
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
}

impl<B: Backend, M: Model<B>> Algorithm<B, M> for Reinforce {
    fn algo(&self) -> Algo {
        Algo::Reinforce
    }

    fn gradient(
        &mut self,
        s: StepContext<'_, B, M>,
        batch: &Batch<M::Input>,
    ) -> Result<Gradient<B>, BackendError> {
        let (rng, pass) = s.split();
        let b = pass.backend;
        let mut sample = |_: usize, c: &modula_modular::ControllerOutput<B>| c.sample(b, rng);
        let (baseline, decay) = (&mut self.baseline, self.decay);
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
            let mean_r = reward.iter().sum::<f64>() / episodes.max(1) as f64;
            // The first batch's mean reward starts the baseline, so early updates are centred.
            let base = *baseline.get_or_insert(mean_r);
            *baseline = Some(decay * base + (1.0 - decay) * mean_r);
            // Both forms weight by 1 / rows; they are kept apart because they round
            // differently and the recorded results (tests/golden) follow each.
            let scale = 1.0 / rows as f32;
            (0..out.log_p.len())
                .map(|j| match out.episodes {
                    Episodes::Rows => (-(reward[j] - base) / rows as f64) as f32,
                    Episodes::Streams(_) => (-(reward[j % episodes] - base) * scale as f64) as f32,
                })
                .collect()
        })
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
