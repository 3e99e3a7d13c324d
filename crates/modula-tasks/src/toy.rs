//! The toy decomposition task: regression on the generated data set of
//! [`modula_data::toy`] with a [`ModularMlp`], evaluated greedily on its test split.

use modula_data::toy::{ToyConfig, ToyData, permutation, purity};
use modula_em::models::{MlpConfig, MlpInput, ModularMlp};
use modula_em::{
    Algo, Batch, ConfigError, DEFAULT_DIVERGENCE_FACTOR, DenseMatch, EStepDue, EStepSettings,
    Target, Task, TrainError, TrainSettings, Trainer, effective_count, invalid, stream,
    usage_counts,
};
use modula_nn::{Checkpoint, ParamStore};
use modula_tensor::{Backend, BackendError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The optimisation schedule and algorithm settings of a toy run (its `[train]` section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyTrainConfig {
    /// Training algorithm.
    pub algo: Algo,
    /// What a dense baseline is matched to (only with `algo = "dense"`).
    pub dense_match: DenseMatch,
    /// Iterations (E-steps and M-steps together).
    pub steps: usize,
    /// Examples per mini-batch.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// EM: candidates per example in an E-step (the stored one plus `samples - 1` draws).
    pub samples: usize,
    /// EM: iteration `i` is an E-step when `i % e_every == 0`.
    pub e_every: usize,
    /// Gradient-norm clipping threshold; 0 disables clipping.
    pub grad_clip: f32,
    /// REINFORCE: decay of the moving-average reward baseline.
    pub reinforce_decay: f32,
    /// Noisy top-k: weight of the importance loss.
    pub importance_weight: f32,
    /// Iterations between logged metrics.
    pub log_every: usize,
    /// Iterations between checkpoints (a final one is always written).
    pub checkpoint_every: usize,
    /// Stop when the loss exceeds this many times the initial loss's magnitude (0: only NaN
    /// and infinity stop the run); see `modula_em::DivergenceGuard`.
    pub divergence_factor: f32,
}

impl Default for ToyTrainConfig {
    fn default() -> Self {
        ToyTrainConfig {
            algo: Algo::Em,
            dense_match: DenseMatch::Compute,
            steps: 20000,
            batch_size: 128,
            lr: 0.01,
            samples: 10,
            e_every: 10,
            grad_clip: 0.0,
            reinforce_decay: 0.9,
            importance_weight: 0.1,
            log_every: 100,
            checkpoint_every: 1000,
            divergence_factor: DEFAULT_DIVERGENCE_FACTOR,
        }
    }
}

impl ToyTrainConfig {
    /// What the trainer needs of it.
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            algo: self.algo,
            lr: self.lr,
            grad_clip: self.grad_clip,
            estep: EStepSettings::paths(self.samples),
            e_every: self.e_every,
            ctrl_weight: 1.0,
            ctrl_mask: false,
            reinforce_decay: self.reinforce_decay,
            divergence_factor: self.divergence_factor,
        }
    }

    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("train.steps", self.steps),
            ("train.batch_size", self.batch_size),
        ] {
            if v == 0 {
                return Err(invalid(field, "is 0; use at least 1"));
            }
        }
        self.settings().validate(self.importance_weight)?;
        for (field, v) in [
            ("train.log_every", self.log_every),
            ("train.checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(invalid(field, "is 0; use 1 or more"));
            }
        }
        Ok(())
    }
}

/// Checks the `[task]` section.
///
/// # Errors
/// A [`ConfigError`] naming the field.
pub fn validate_task(cfg: &ToyConfig) -> Result<(), ConfigError> {
    cfg.validate()
        .map_err(|(field, problem)| invalid(field, problem))
}

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

/// Stream of the per-epoch permutations, apart from the trainer's streams.
const STREAM_EPOCH: u64 = 1 << 61;

/// The toy task on the device: the generated data, its splits uploaded once, and the batcher.
#[derive(Debug)]
pub struct ToyTask<B: Backend> {
    /// The generated data (host copy).
    pub data: ToyData,
    train_x: B::Tensor,
    train_y: B::Tensor,
    test_x: B::Tensor,
    test_y: B::Tensor,
    variance: f32,
    batch_size: usize,
    seed: u64,
    layers: usize,
    epoch: Option<(u64, Vec<u32>)>,
    /// The keys a data-parallel rank owns ([`Task::shard`]); every key alone.
    owned: Option<std::ops::Range<usize>>,
}

impl<B: Backend> ToyTask<B> {
    /// Generates the data from `seed`, builds the network for `train.algo` (initialised from
    /// `seed`) and the trainer. The configurations must be valid.
    pub fn trainer(
        backend: B,
        task: &ToyConfig,
        model: &MlpConfig,
        train: &ToyTrainConfig,
        seed: u64,
    ) -> Trainer<B, ToyTask<B>> {
        let data = ToyData::generate(task, seed);
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(3);
        let net = ModularMlp::new(
            &backend,
            &mut params,
            data.train.dim,
            1,
            model,
            train.algo,
            train.dense_match,
            train.importance_weight,
            &mut rng,
        );
        let b = &backend;
        let (tr, te) = (&data.train, &data.test);
        let task = ToyTask {
            train_x: b.upload([tr.len(), tr.dim], &tr.x),
            train_y: b.upload([tr.len(), 1], &tr.y),
            test_x: b.upload([te.len(), te.dim], &te.x),
            test_y: b.upload([te.len(), 1], &te.y),
            variance: model.variance,
            batch_size: train.batch_size.min(tr.len()),
            seed,
            layers: net.layers.len(),
            epoch: None,
            owned: None,
            data,
        };
        Trainer::new(backend, task, net, params, train.settings(), seed)
    }

    /// The stable indices of the mini-batch of iteration `step`: consecutive slices of a
    /// per-epoch permutation drawn from the seed.
    pub fn batch_indices(&mut self, step: u64) -> Vec<u32> {
        let (examples, bs) = (self.data.train.len(), self.batch_size);
        let per_epoch = (examples / bs) as u64;
        let (epoch, j) = (step / per_epoch, (step % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let perm = permutation(examples, &mut stream(self.seed, STREAM_EPOCH + epoch));
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        perm[j * bs..(j + 1) * bs].to_vec()
    }

    /// Greedy evaluation of `model` on the test split.
    ///
    /// # Errors
    /// Device failures.
    pub fn evaluate(
        &self,
        b: &B,
        model: &ModularMlp,
        params: &ParamStore<B>,
    ) -> Result<ToyEval, BackendError> {
        let target = Target::Regression {
            y: b.duplicate(&self.test_y),
            variance: self.variance,
        };
        let out = crate::greedy_forward(b, model, params, &self.test_x, &target, true, false)?;
        let pred = b.download(&out.prediction)?;
        let test = &self.data.test;
        let n = pred.len();
        let test_mse = pred
            .iter()
            .zip(&test.y)
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
            .zip(model.layers.iter())
            .map(|(s, l)| usage_counts([s], l.modules.modules))
            .collect();
        Ok(ToyEval {
            test_mse,
            test_nll,
            purity: purity(&first, &test.regime),
            effective_modules: usage.first().map_or(0.0, |u| effective_count(u)),
            usage,
            controller_perplexity: out.stats.map_or(1.0, |s| s.mean_entropy.exp()),
        })
    }
}

impl<B: Backend> Task<B> for ToyTask<B> {
    type Model = ModularMlp;

    fn table_rows(&self) -> usize {
        self.data.train.len()
    }

    fn steps_per_epoch(&self) -> u64 {
        (self.data.train.len() / self.batch_size) as u64
    }

    fn batch(&mut self, b: &B, step: u64) -> Batch<MlpInput<B>> {
        let mut idx = self.batch_indices(step);
        if let Some(owned) = &self.owned {
            idx.retain(|&i| owned.contains(&(i as usize)));
        }
        let input = MlpInput {
            x: b.gather_rows(&self.train_x, &idx),
            target: Target::Regression {
                y: b.gather_rows(&self.train_y, &idx),
                variance: self.variance,
            },
        };
        crate::keyed_batch(input, idx, self.layers)
    }

    fn e_step_due(&self, step: u64, e_every: usize) -> EStepDue {
        crate::e_step_every(step, e_every)
    }

    fn shard(&mut self, keys: std::ops::Range<usize>) -> Result<(), TrainError> {
        self.owned = Some(keys);
        Ok(())
    }

    fn advance(&mut self, _b: &B, _carry: Option<B::Tensor>) {}

    fn save(&self, _b: &B, _ck: &mut Checkpoint) -> Result<(), BackendError> {
        // Batches are a function of the step alone: nothing to save.
        Ok(())
    }

    fn restore(&mut self, _b: &B, _ck: &Checkpoint) -> Result<(), TrainError> {
        self.epoch = None;
        Ok(())
    }
}
