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

    /// Whether a data-parallel run can train it (`Trainer::distribute`): EM (its table is
    /// sharded by example), the dense baselines (nothing per example) and REINFORCE (each
    /// example samples from a stream of its own, and the baseline follows the mean reward
    /// summed over the ranks). Noisy top-k's importance loss is a function of the whole
    /// batch's gates and its noise is drawn in batch order, which a rank's share of the batch
    /// does not reproduce; uniform routing draws in batch order too. (The algorithms'
    /// `Algorithm::keep_shard` says the same, and `Trainer::distribute` checks both.)
    pub fn distributes(self) -> bool {
        matches!(self, Algo::Em | Algo::Dense | Algo::Reinforce)
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

/// How an E-step looks for better assignments of a sequence's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// Whole candidates: the stored assignment and `samples - 1` ancestral draws, each scored
    /// by its whole likelihood (for a sequence, the window's sum): the paper's E-step.
    #[default]
    Path,
    /// Step by step through a sequence, along the best prefix found so far: each step's
    /// candidates are scored by the next word's likelihood (and the step's prior), the best
    /// is kept and the walk goes on from its state. The finished path replaces the stored one
    /// only if its window score is higher, so the bound still never decreases.
    Step,
}

/// Along which path a per-step search walks, and so which routes the M-step trains the
/// modules on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EPath {
    /// The search walks along the best prefix it has found; the stored path is a route,
    /// and the M-step runs the modules along it (the paper's EM).
    #[default]
    Best,
    /// The search walks along the controller's greedy routes and stores, at each step, the
    /// candidate that scores best from the greedy state: a target for the controller, not
    /// a route. The M-step runs the modules along the greedy routes (those a greedy
    /// evaluation takes) and pulls the controller towards the stored targets, so the
    /// modules never train on routes chosen knowing the next word.
    Greedy,
}

/// EM's E-step settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EStepSettings {
    /// Candidates per example (or per step, for `Search::Step`): the stored one plus
    /// `samples - 1` proposals; `Search::Step` with `K = 1` and `M <= samples` enumerates the
    /// `M` modules instead.
    pub samples: usize,
    /// How candidates are searched.
    pub search: Search,
    /// `Search::Step`: weight of `log p(a_t | .)` in a step's score (0 to 1).
    pub prior_weight: f32,
    /// `Search::Step`: a step's candidate is scored by the likelihood of the next `horizon`
    /// words, continuing greedily after it (1: the next word only).
    pub horizon: usize,
    /// `Search::Step`: with a positive value, each module takes at most
    /// `ceil(capacity * n * K / M)` of a step's `n` streams (a balanced assignment); 0: no
    /// limit.
    pub capacity: f32,
    /// `Search::Step`: draw each step's choice from the step's posterior (the softmax of its
    /// scores) instead of taking the best (stochastic EM).
    pub sample: bool,
    /// Proposals come from `(1 - uniform) * p(a | .) + uniform / M` per slot (0: the
    /// controller alone).
    pub uniform: f32,
    /// Score candidates with dropout active, as the M-step trains (off: without dropout).
    pub dropout: bool,
    /// `Search::Step`: the path the search walks and the M-step's routes.
    pub path: EPath,
}

impl EStepSettings {
    /// The paper's E-step with `samples` candidates: whole paths, no options.
    pub fn paths(samples: usize) -> Self {
        EStepSettings {
            samples,
            search: Search::Path,
            prior_weight: 1.0,
            horizon: 1,
            capacity: 0.0,
            sample: false,
            uniform: 0.0,
            dropout: false,
            path: EPath::Best,
        }
    }

    /// Checks every field, naming the first bad one as a `train.*` key.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.samples == 0 {
            return Err(invalid(
                "train.samples",
                "is 0; an E-step needs at least the stored candidate (use 1 or more, 10 by default)",
            ));
        }
        if !(0.0..=1.0).contains(&self.prior_weight) {
            return Err(invalid(
                "train.e_prior",
                format!("is {}; use a weight in [0, 1]", self.prior_weight),
            ));
        }
        if self.horizon == 0 {
            return Err(invalid(
                "train.e_horizon",
                "is 0; use 1 (the next word) or more",
            ));
        }
        if !(self.capacity == 0.0 || (self.capacity >= 1.0 && self.capacity.is_finite())) {
            return Err(invalid(
                "train.e_capacity",
                format!(
                    "is {}; use 0 (no limit) or a factor of at least 1 over an even share of the streams",
                    self.capacity
                ),
            ));
        }
        if self.path == EPath::Greedy && self.search != Search::Step {
            return Err(invalid(
                "train.e_path",
                "is \"greedy\", which walks a per-step search; set train.e_search = \"step\" or use e_path = \"best\"",
            ));
        }
        if !(0.0..=1.0).contains(&self.uniform) {
            return Err(invalid(
                "train.e_uniform",
                format!("is {}; use a mixture weight in [0, 1]", self.uniform),
            ));
        }
        Ok(())
    }
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
    /// EM: the E-step's settings.
    pub estep: EStepSettings,
    /// EM: E-step period (its meaning is the task's [`crate::EStepDue`] rule).
    pub e_every: usize,
    /// EM: weight of the controller's loss `-log p(a* | .)` in the M-step (1 in the paper).
    pub ctrl_weight: f32,
    /// EM: leave the controller's loss out at positions no E-step has visited yet, whose
    /// stored assignments are still the random initial ones.
    pub ctrl_mask: bool,
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
        self.estep.validate()?;
        if self.e_every == 0 {
            return Err(invalid(
                "train.e_every",
                "is 0; use 1 or more (10 by default)",
            ));
        }
        if !(self.ctrl_weight >= 0.0 && self.ctrl_weight.is_finite()) {
            return Err(invalid(
                "train.ctrl_weight",
                format!("is {}; use 0 or more (1 by default)", self.ctrl_weight),
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
