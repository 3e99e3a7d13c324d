//! What every task's configuration shares: the algorithm, the dense baselines' matching, the
//! trainer's settings, and the error that names a bad field.

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

/// A [`ConfigError`] for `field`.
pub fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
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
    /// The modular network with every selection drawn uniformly at random and the controller
    /// left untrained: the baseline that shows what learned routing adds.
    Uniform,
}

impl Algo {
    /// The name used on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Em => "em",
            Algo::Reinforce => "reinforce",
            Algo::Topk => "topk",
            Algo::Dense => "dense",
            Algo::Uniform => "uniform",
        }
    }

    /// The algorithm called `name` on the command line and in configurations.
    pub fn from_name(name: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Every algorithm, in the order the documentation lists them.
    pub const ALL: [Algo; 5] = [
        Algo::Em,
        Algo::Reinforce,
        Algo::Topk,
        Algo::Dense,
        Algo::Uniform,
    ];
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

/// What the trainer and the algorithms need of a run's configuration, whatever the task: the
/// algorithm, the optimiser and EM's E-step settings. Each task's own `[train]` section
/// (validated by the task) resolves to one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainSettings {
    /// The training algorithm.
    pub algo: Algo,
    /// Adam's learning rate.
    pub lr: f32,
    /// Gradient-norm clipping threshold; 0 disables clipping.
    pub grad_clip: f32,
    /// EM: candidates per example in an E-step (the stored one plus `samples - 1` draws).
    pub samples: usize,
    /// EM: E-step period (its meaning is the task's [`crate::EStepDue`] rule).
    pub e_every: usize,
    /// REINFORCE: decay of the moving-average reward baseline.
    pub reinforce_decay: f32,
    /// The divergence guard's factor (see [`crate::DivergenceGuard`]); 0 turns it off.
    pub divergence_factor: f32,
}

impl TrainSettings {
    /// Checks every field, naming the first bad one as a `train.*` key.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self, importance_weight: f32) -> Result<(), ConfigError> {
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
        if !(self.divergence_factor >= 0.0 && self.divergence_factor.is_finite()) {
            return Err(invalid(
                "train.divergence_factor",
                format!(
                    "is {}; use 0 (off) or a positive number ({} by default)",
                    self.divergence_factor,
                    crate::DEFAULT_DIVERGENCE_FACTOR
                ),
            ));
        }
        check_optimiser(
            self.lr,
            self.grad_clip,
            self.reinforce_decay,
            importance_weight,
        )
    }
}

/// Checks the settings every trainer shares: the learning rate, clipping, REINFORCE's baseline
/// decay and the top-k importance weight, naming the `train.*` field at fault.
fn check_optimiser(
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
