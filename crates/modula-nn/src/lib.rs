//! Neural-network building blocks for modula, on any [`modula_tensor::Backend`].
//!
//! - [`ParamStore`] holds every parameter under a stable [`ParamId`] and a unique name;
//!   [`Grads`] holds their gradients.
//! - [`Module`]: explicit `forward` (returning a typed cache) and `backward`.
//! - Layers: [`Linear`], [`Activation`], [`Embedding`], [`Dropout`], [`Flatten`],
//!   [`Conv2d`], [`MaxPool2d`].
//! - Recurrence: [`GruCell`] and [`Gru`] (unrolled, with backpropagation through time), built on
//!   the reusable gate nonlinearity [`gru_gates_forward`] / [`gru_gates_backward`].
//! - Losses returning per-example values: [`softmax_cross_entropy`], [`gaussian_nll`].
//! - Optimisers: [`Sgd`] (momentum), [`Adam`]; gradient clipping with [`Grads::clip_norm`].
//! - Checkpoints in the safetensors format: [`save_safetensors`] / [`load_safetensors`] for a
//!   [`ParamStore`], and [`Checkpoint`] for arbitrary named F32/U16/I64 tensors plus metadata;
//!   failures are typed [`CheckpointError`]s.
//! - [`gradcheck`]: finite-difference checks for any backward pass.
//!
//! A two-layer network trained for one step:
//!
//! ```
//! use modula_nn::{Activation, Adam, Ctx, Grads, Init, Linear, Module, Optimizer, ParamStore};
//! use modula_nn::{softmax_cross_entropy, softmax_cross_entropy_backward};
//! use modula_tensor::{Backend, Cpu};
//! use rand::SeedableRng;
//!
//! let cpu = Cpu::with_threads(1);
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let mut params = ParamStore::new();
//! let fc1 = Linear::new(&cpu, &mut params, "fc1", 4, 8, Init::He, &mut rng);
//! let fc2 = Linear::new(&cpu, &mut params, "fc2", 8, 3, Init::Glorot, &mut rng);
//! let x = cpu.upload([2, 4], &[0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4]);
//! let targets = [0u32, 2];
//!
//! let mut ctx = Ctx::train(0);
//! let (h, c1) = fc1.forward(&cpu, &params, &x, &mut ctx);
//! let (a, c2) = Activation::RELU.forward(&cpu, &params, &h, &mut ctx);
//! let (logits, c3) = fc2.forward(&cpu, &params, &a, &mut ctx);
//! let (nll, log_probs) = softmax_cross_entropy(&cpu, logits, &targets);
//!
//! let mut grads = Grads::new();
//! let d_nll = cpu.upload([2, 1], &[0.5, 0.5]); // gradient of the mean
//! let d_logits = softmax_cross_entropy_backward(&cpu, &log_probs, &targets, &d_nll);
//! let da = fc2.backward(&cpu, &params, c3, &d_logits, &mut grads);
//! let dh = Activation::RELU.backward(&cpu, &params, c2, &da, &mut grads);
//! fc1.backward(&cpu, &params, c1, &dh, &mut grads);
//! Adam::new(1e-3).step(&cpu, &mut params, &grads);
//! assert_eq!(cpu.download(&nll)?.len(), 2);
//! # Ok::<(), modula_tensor::BackendError>(())
//! ```

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
    gaussian_nll, gaussian_nll_backward, softmax_cross_entropy, softmax_cross_entropy_backward,
};
pub use module::{Ctx, Module};
pub use optim::{Adam, Optimizer, Sgd};
pub use param::{Grads, ParamId, ParamStore};
