//! Validated configuration of a training run: the model, the algorithm and its schedule.

use serde::{Deserialize, Serialize};

/// A configuration value that cannot be used, naming the field and what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid configuration: `{field}` {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `model.k`.
    pub field: &'static str,
    /// What is wrong and what to use instead.
    pub problem: String,
}

pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        problem: problem.into(),
    }
}

/// The training algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// Viterbi-style generalized EM over stored module assignments.
    #[default]
    Em,
    /// Score-function gradients for the controller with a moving-average baseline.
    Reinforce,
    /// Noisy top-k gating (Shazeer et al. 2017) with the importance loss.
    Topk,
    /// A non-modular network (see [`DenseMatch`]).
    Dense,
}

impl Algo {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Em => "em",
            Algo::Reinforce => "reinforce",
            Algo::Topk => "topk",
            Algo::Dense => "dense",
        }
    }
}

/// What a dense baseline is matched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DenseMatch {
    /// One module's width: the compute per example of a modular network with `K = 1`.
    #[default]
    Compute,
    /// `M` modules' width: the parameter count of the modular network.
    Params,
}

/// Shape of the modular network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Modules per modular layer, `M`.
    pub modules: usize,
    /// Modules evaluated per input and layer, `K`.
    pub k: usize,
    /// Number of stacked modular layers (1 or more); hidden layers use ReLU.
    pub layers: usize,
    /// Width of the hidden layers (unused with one layer).
    pub hidden: usize,
    /// Variance of the Gaussian output distribution `p(y | x, a)` for regression.
    pub variance: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            modules: 6,
            k: 1,
            layers: 1,
            hidden: 16,
            variance: 0.01,
        }
    }
}

/// The optimisation schedule and algorithm settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
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
        }
    }
}

impl ModelConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.modules == 0 || self.modules > u16::MAX as usize {
            return Err(invalid(
                "model.modules",
                format!("is {}; use 1 to {}", self.modules, u16::MAX),
            ));
        }
        if self.k == 0 {
            return Err(invalid("model.k", "is 0; use at least 1 module per input"));
        }
        if self.k > self.modules {
            return Err(invalid(
                "model.k",
                format!(
                    "is {} but model.modules is {}; K must not exceed M",
                    self.k, self.modules
                ),
            ));
        }
        if self.layers == 0 {
            return Err(invalid("model.layers", "is 0; use at least 1"));
        }
        if self.layers > 1 && self.hidden == 0 {
            return Err(invalid(
                "model.hidden",
                "is 0; stacked layers need a positive hidden width",
            ));
        }
        if !(self.variance > 0.0 && self.variance.is_finite()) {
            return Err(invalid(
                "model.variance",
                format!("is {}; use a positive finite number", self.variance),
            ));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.steps == 0 {
            return Err(invalid("train.steps", "is 0; use at least 1"));
        }
        if self.batch_size == 0 {
            return Err(invalid("train.batch_size", "is 0; use at least 1"));
        }
        if self.samples == 0 {
            return Err(invalid(
                "train.samples",
                "is 0; an E-step needs at least the stored candidate (use 1 or more, 10 by default)",
            ));
        }
        if self.e_every == 0 {
            return Err(invalid(
                "train.e_every",
                "is 0; use 1 or more (10 by default)",
            ));
        }
        check_optimiser(
            self.lr,
            self.grad_clip,
            self.reinforce_decay,
            self.importance_weight,
        )?;
        if self.log_every == 0 {
            return Err(invalid("train.log_every", "is 0; use 1 or more"));
        }
        if self.checkpoint_every == 0 {
            return Err(invalid("train.checkpoint_every", "is 0; use 1 or more"));
        }
        Ok(())
    }
}

/// Checks the settings every trainer shares: the learning rate, clipping, REINFORCE's baseline
/// decay and the top-k importance weight, naming the `train.*` field at fault.
pub(crate) fn check_optimiser(
    lr: f32,
    grad_clip: f32,
    reinforce_decay: f32,
    importance_weight: f32,
) -> Result<(), ConfigError> {
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(invalid(
            "train.lr",
            format!("is {}; the learning rate must be positive and finite", lr),
        ));
    }
    if !(grad_clip >= 0.0 && grad_clip.is_finite()) {
        return Err(invalid(
            "train.grad_clip",
            format!("is {}; use 0 (off) or a positive number", grad_clip),
        ));
    }
    if !(0.0..1.0).contains(&reinforce_decay) {
        return Err(invalid(
            "train.reinforce_decay",
            format!("is {}; use a value in [0, 1)", reinforce_decay),
        ));
    }
    if !(importance_weight >= 0.0 && importance_weight.is_finite()) {
        return Err(invalid(
            "train.importance_weight",
            format!("is {}; use 0 or more", importance_weight),
        ));
    }
    Ok(())
}
