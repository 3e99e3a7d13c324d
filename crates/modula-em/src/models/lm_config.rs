//! Configuration of the word-level language model: its widths, its modular layer, and the
//! recurrent cell each algorithm trains.

use serde::{Deserialize, Serialize};

use crate::config::{Algo, ConfigError, DenseMatch, invalid};

/// Shape of the language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmModelConfig {
    /// Word-embedding width.
    pub embed: usize,
    /// GRU hidden width of the modular network and of the compute-matched dense baseline.
    pub hidden: usize,
    /// Modules `M` of the modular GRU's layer.
    pub modules: usize,
    /// Modules per time step `K`.
    pub k: usize,
    /// Dropout on the embedding and on the states fed to the softmax.
    pub dropout: f32,
    /// Whether the controller's loss trains the state and embedding it reads (the
    /// specification's "no stop-gradient", the default) or only the controller's weights.
    /// Off, the first modular PTB runs stopped diverging at validation but also stopped
    /// learning beyond unigram statistics in one epoch (docs/experiments/ptb.md).
    pub controller_input_grad: bool,
    /// Dense runs only: a factor on the dense GRU cell's Glorot initialisation (1: standard).
    /// `sqrt(1 / (2 M))` starts it at the scale of one module of an `M`-module modular cell,
    /// whose weights are Glorot-initialised over the stacked `[M * d, 3 h]` tensor (exact when
    /// `embed = hidden`): the baseline that separates what routing does from what the
    /// modules' smaller initialisation does.
    pub dense_init_scale: f32,
    /// Modular and top-k runs only: a factor on the modules' initialisation, which is Glorot
    /// over the stacked `[M * d, 3 h]` tensor (the authors' library; about `sqrt(2 M)` smaller
    /// than a standalone GRU's when `embed = hidden`). `sqrt(2 M)` starts every module at a
    /// dense GRU's scale.
    pub module_init_scale: f32,
    /// Modular and top-k runs only: each module's weights are a base shared by all modules
    /// plus the module's own delta ([`modula_modular::SharedBase`]), the base started like a
    /// dense GRU's weights and the deltas like the modules' own. A routed row still costs one
    /// module's product; the base learns from every position whatever the routing, so that
    /// no module learns from its share of the stream alone.
    pub shared_base: bool,
}

impl Default for LmModelConfig {
    fn default() -> Self {
        LmModelConfig {
            embed: 256,
            hidden: 256,
            modules: 5,
            k: 1,
            dropout: 0.2,
            controller_input_grad: true,
            dense_init_scale: 1.0,
            module_init_scale: 1.0,
            shared_base: false,
        }
    }
}

/// The recurrent cell a run builds, resolved from the algorithm and the model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recurrent {
    /// A controller-routed modular GRU (EM, REINFORCE).
    Modular {
        /// `M`.
        modules: usize,
        /// `K`.
        k: usize,
    },
    /// A noisy top-k gated modular GRU.
    TopK {
        /// `M`.
        modules: usize,
        /// Modules kept per step (`max(K, 2)`: with one the gate gets no gradient).
        k: usize,
        /// Weight of the importance loss.
        importance_weight: f32,
    },
    /// A dense GRU of this width.
    Dense {
        /// Hidden width.
        hidden: usize,
    },
}

impl LmModelConfig {
    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field and the allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [("model.embed", self.embed), ("model.hidden", self.hidden)] {
            if v == 0 {
                return Err(invalid(
                    field,
                    "is 0; use a positive width (256 by default)",
                ));
            }
        }
        if self.modules == 0 || self.modules > u16::MAX as usize {
            return Err(invalid(
                "model.modules",
                format!("is {}; use 1 to {}", self.modules, u16::MAX),
            ));
        }
        if self.k == 0 || self.k > self.modules {
            return Err(invalid(
                "model.k",
                format!("is {}; use 1 to model.modules ({})", self.k, self.modules),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "model.dropout",
                format!("is {}; use a probability in [0, 1)", self.dropout),
            ));
        }
        if !(self.dense_init_scale > 0.0 && self.dense_init_scale.is_finite()) {
            return Err(invalid(
                "model.dense_init_scale",
                format!(
                    "is {}; use a positive factor (1 by default)",
                    self.dense_init_scale
                ),
            ));
        }
        Ok(())
    }

    /// Parameters of the modular network (controller-routed) for a vocabulary of `vocab`.
    pub fn modular_params(&self, vocab: usize) -> usize {
        let (d, h, m, k) = (self.embed, self.hidden, self.modules, self.k);
        // The controller: `K` heads of `M` logits from `[x; h]`.
        let controller = sum(&[prod(&[d.saturating_add(h), k, m]), prod(&[k, m])]);
        sum(&[self.ends(vocab, h), self.modules_params(), controller])
    }

    /// Parameters of a dense GRU language model of hidden width `h`.
    pub fn dense_params(&self, vocab: usize, h: usize) -> usize {
        let d = self.embed;
        sum(&[
            self.ends(vocab, h),
            prod(&[d.saturating_add(h), 3, h]),
            prod(&[6, h]),
        ])
    }

    /// The embedding and the softmax layer around a recurrent cell of width `h`.
    fn ends(&self, vocab: usize, h: usize) -> usize {
        sum(&[prod(&[vocab, self.embed]), prod(&[h, vocab]), vocab])
    }

    /// The `M` GRU modules' input and recurrent projections (three gates each, with biases),
    /// and with a shared base one more set, the base's.
    fn modules_params(&self) -> usize {
        let (d, h) = (self.embed, self.hidden);
        prod(&[
            self.modules.saturating_add(usize::from(self.shared_base)),
            sum(&[prod(&[d.saturating_add(h), 3, h]), prod(&[6, h])]),
        ])
    }

    /// The trainable scalars of the language model `algo` trains for a vocabulary of `vocab`,
    /// counted without building it (saturating, so that absurd sizes stay comparable).
    pub fn parameters(
        &self,
        algo: Algo,
        dense_match: DenseMatch,
        importance_weight: f32,
        vocab: usize,
    ) -> usize {
        match self.recurrent(algo, dense_match, importance_weight, vocab) {
            Recurrent::Modular { .. } => self.modular_params(vocab),
            // Top-k's gate: clean and noise projections of `[x; h]` onto the modules.
            Recurrent::TopK { modules, .. } => {
                let gate = prod(&[
                    2,
                    sum(&[
                        prod(&[self.embed.saturating_add(self.hidden), modules]),
                        modules,
                    ]),
                ]);
                sum(&[self.ends(vocab, self.hidden), self.modules_params(), gate])
            }
            Recurrent::Dense { hidden } => self.dense_params(vocab, hidden),
        }
    }

    /// The cell that `algo` trains: the modular network for EM, REINFORCE and uniform routing, the top-k
    /// gated one (`k = max(K, 2)`) for top-k, and for dense the compute-matched width
    /// (`hidden`) or the smallest width whose parameter count reaches the modular network's.
    pub fn recurrent(
        &self,
        algo: Algo,
        dense_match: DenseMatch,
        importance_weight: f32,
        vocab: usize,
    ) -> Recurrent {
        match algo {
            Algo::Em | Algo::Reinforce | Algo::Uniform => Recurrent::Modular {
                modules: self.modules,
                k: self.k,
            },
            Algo::Topk => Recurrent::TopK {
                modules: self.modules,
                k: self.k.max(2).min(self.modules),
                importance_weight,
            },
            Algo::Dense => Recurrent::Dense {
                hidden: match dense_match {
                    DenseMatch::Compute => self.hidden,
                    DenseMatch::Params => {
                        // The smallest width whose count reaches the target, by bisection
                        // (the count grows with the width), so that even absurd
                        // configurations resolve at once.
                        let target = self.modular_params(vocab);
                        let (mut lo, mut hi) = (1, target.max(1));
                        while lo < hi {
                            let mid = lo + (hi - lo) / 2;
                            if self.dense_params(vocab, mid) >= target {
                                hi = mid;
                            } else {
                                lo = mid + 1;
                            }
                        }
                        lo
                    }
                },
            },
        }
    }
}

/// The product of `factors`, saturating at `usize::MAX`.
fn prod(factors: &[usize]) -> usize {
    factors.iter().fold(1, |a, &b| a.saturating_mul(b))
}

/// The sum of `terms`, saturating at `usize::MAX`.
fn sum(terms: &[usize]) -> usize {
    terms.iter().fold(0, |a, &b| a.saturating_add(b))
}
