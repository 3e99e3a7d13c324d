//! The networks modula trains, in one place: a stack of modular linear layers
//! ([`ModularMlp`], the toy task's network and its dense baselines), the word-level language
//! model over a modular, top-k gated or dense GRU cell ([`LanguageModel`]), and the noisy
//! top-k gate both use for the top-k baseline ([`TopKGate`]). Each implements
//! [`crate::Model`].

pub mod lm;
pub mod lm_config;
pub mod mlp;
pub mod topk;

pub use lm::{
    Cell, FilteredWindow, LanguageModel, LmWindow, TopKGruCell, WindowCache, WindowOutput,
};
pub use lm_config::{LmModelConfig, Recurrent};
pub use mlp::{Gate, MlpCache, MlpConfig, MlpInput, MlpLayer, MlpOutput, ModularMlp};
pub use topk::{TopKCache, TopKGate};
