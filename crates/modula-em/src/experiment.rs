//! The toy experiment end to end: generate the task, build the network for the chosen
//! algorithm, train, and evaluate greedily on the test split.

use modula_nn::ParamStore;
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::algo::evaluate;
use crate::config::{ModelConfig, TrainConfig};
use crate::mlp::ModularMlp;
use crate::model::Target;
use crate::toy::{ToyConfig, ToyTask, purity};
use crate::trainer::{TargetData, TrainData, Trainer};

/// Greedy evaluation of a toy run on its test split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToyEval {
    /// Mean squared error of the predictions.
    pub test_mse: f64,
    /// Mean `-log p(y | x, a)` under the model's Gaussian.
    pub test_nll: f64,
    /// Fraction of test points whose first-layer greedy module is the majority module of
    /// their true regime.
    pub purity: f64,
    /// Per layer, how many test points each module served (greedy).
    pub usage: Vec<Vec<u64>>,
    /// `exp` of the entropy of the first layer's usage histogram: the number of modules in
    /// real use.
    pub effective_modules: f64,
    /// `exp` of the controllers' mean entropy on the test split.
    pub controller_perplexity: f64,
}

/// A toy-task run: the task, its trainer and the test split on the device.
#[derive(Debug)]
pub struct ToyExperiment<B: Backend> {
    /// The generated task (host copy).
    pub task: ToyTask,
    /// The training state.
    pub trainer: Trainer<B, ModularMlp>,
    test_x: B::Tensor,
    test_y: B::Tensor,
}

/// `exp` of the entropy of a histogram.
pub fn effective_count(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| c as f64 / total as f64)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

impl<B: Backend> ToyExperiment<B> {
    /// Generates the task from `seed`, builds the network (initialised from `seed`) and the
    /// trainer. The configurations must be valid.
    pub fn new(
        backend: B,
        task: &ToyConfig,
        model: &ModelConfig,
        train: &TrainConfig,
        seed: u64,
    ) -> Self {
        let task = ToyTask::generate(task, seed);
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(3);
        let net = ModularMlp::new(
            &backend,
            &mut params,
            task.train.dim,
            1,
            model,
            train.algo,
            train.dense_match,
            train.importance_weight,
            &mut rng,
        );
        let b = &backend;
        let data = TrainData {
            x: b.upload([task.train.len(), task.train.dim], &task.train.x),
            target: TargetData::Regression(b.upload([task.train.len(), 1], &task.train.y)),
        };
        let test_x = b.upload([task.test.len(), task.test.dim], &task.test.x);
        let test_y = b.upload([task.test.len(), 1], &task.test.y);
        let trainer = Trainer::new(
            backend,
            net,
            params,
            train.clone(),
            seed,
            data,
            model.variance,
        );
        ToyExperiment {
            task,
            trainer,
            test_x,
            test_y,
        }
    }

    /// Greedy evaluation on the test split.
    ///
    /// # Errors
    /// Device failures.
    pub fn evaluate(&self) -> Result<ToyEval, BackendError> {
        let t = &self.trainer;
        let b = &t.backend;
        let target = Target::Regression {
            y: b.duplicate(&self.test_y),
            variance: t.variance(),
        };
        let out = evaluate(&t.model, b, &t.params, &self.test_x, &target)?;
        let pred = b.download(&out.prediction)?;
        let n = pred.len();
        let test_mse = pred
            .iter()
            .zip(&self.task.test.y)
            .map(|(p, y)| ((p - y) as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        let nll = b.download(&out.task_nll)?;
        let test_nll = nll.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let first: Vec<u32> = out
            .selections
            .first()
            .map_or_else(Vec::new, |s| (0..s.rows()).map(|i| s.row(i)[0]).collect());
        let usage: Vec<Vec<u64>> = out
            .selections
            .iter()
            .zip(t.model.layers.iter())
            .map(|(s, l)| {
                let mut c = vec![0u64; l.modules.modules];
                s.as_slice().iter().for_each(|&m| c[m as usize] += 1);
                c
            })
            .collect();
        Ok(ToyEval {
            test_mse,
            test_nll,
            purity: purity(&first, &self.task.test.regime),
            effective_modules: usage.first().map_or(0.0, |u| effective_count(u)),
            usage,
            controller_perplexity: out.stats.map_or(1.0, |s| s.mean_entropy.exp()),
        })
    }
}
