//! The networks modula trains, in one place: a stack of modular linear layers
//! ([`ModularMlp`], the toy task's network and its dense baselines), the image tasks'
//! networks ([`ImageModel`]: the modular convolutional network [`ConvNet`] and the fully
//! connected ReLU network [`ReluMlp`] of the sparsity study and the network of neuron groups
//! [`GroupNet`] converted from it), the word-level language model
//! over a modular, top-k gated or dense GRU cell ([`LanguageModel`]), and the noisy top-k
//! gate the modular ones use for the top-k baseline ([`TopKGate`]). The feed-forward networks
//! share their gates, output distributions and [`crate::Model`] bodies through
//! [`feedforward`]. Each implements [`crate::Model`].

pub mod conv;
pub mod feedforward;
pub mod groups;
pub mod image;
pub mod lm;
pub mod lm_config;
pub mod mlp;
pub mod relu_mlp;
pub mod topk;

pub use conv::{ConvCache, ConvLayer, ConvNet, ConvPlan};
pub use feedforward::{ClassifiedCache, FeedForward, FfCache, Gate, MlpInput, MlpOutput};
pub use groups::{GroupLayer, GroupNet, GroupNetCache};
pub use image::{ImageCache, ImageModel, ImageModelConfig, ImageNet};
pub use lm::{
    Cell, FilteredWindow, LanguageModel, LmWindow, TopKGruCell, WindowCache, WindowOutput,
};
pub use lm_config::{LmModelConfig, Recurrent};
pub use mlp::{MlpCache, MlpConfig, MlpLayer, ModularMlp};
pub use relu_mlp::{ReluMlp, ReluMlpCache};
pub use topk::{TopKCache, TopKGate};
