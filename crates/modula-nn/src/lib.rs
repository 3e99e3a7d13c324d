#![doc = include_str!("../README.md")]

mod activation;
mod checkpoint;
mod conv;
mod dropout;
mod embedding;
mod flatten;
pub mod gradcheck;
mod gru;
mod init;
mod linear;
mod loss;
mod module;
mod optim;
mod param;
mod sparse_linear;

pub use activation::Activation;
pub use checkpoint::{
    Checkpoint, CheckpointError, ExtraTensors, StoredTensor, TensorData, load_safetensors,
    save_safetensors,
};
pub use conv::{Conv2d, MaxPool2d};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use flatten::Flatten;
pub use gru::{
    Gru, GruCell, GruCellCache, GruGatesCache, GruSeqCache, gru_gates_backward, gru_gates_forward,
    gru_gates_from_parts, gru_gates_split_grad,
};
pub use init::{Init, glorot_uniform, he_normal, normal};
pub use linear::Linear;
pub use loss::{
    gaussian_nll, gaussian_nll_backward, l1_penalty, l1_penalty_backward, l1_weights,
    softmax_cross_entropy, softmax_cross_entropy_backward,
};
pub use module::{Ctx, Module};
pub use optim::{Adam, Optimizer, Sgd};
pub use param::{Grads, ParamId, ParamStore};
pub use sparse_linear::{CROSSOVER, Dispatch, SparseLinear, SparseLinearCache, crossover};
