//! Modular layers for modula: a pool of `M` modules of which a learned controller picks `K`
//! per input, evaluated with grouped per-module compute so that cost follows `K`, not `M`.
//!
//! - [`Controller`]: `K` categorical distributions over the modules; sampling, greedy choice,
//!   `log p(a | x)` and its backward.
//! - [`Selection`] (`[n, K]` module indices) and [`Routing`], the dispatch plan: distinct
//!   (row, module) pairs counting-sorted by module into contiguous blocks.
//! - [`ModularLinear`]: stacked linear modules run as one grouped GEMM per call, forward and
//!   backward, with optional per-slot gates; [`ModularLinear::routed`] makes it a
//!   [`modula_nn::Module`].
//! - [`ModularConv2d`]: stacked convolution modules, the same grouped GEMMs over im2col
//!   patch rows.
//! - [`ModularGruCell`]: a GRU whose modules ([`ModularGruModules`], standard GRU weight
//!   sets) are chosen per step by a controller on `[x_t; h_{t-1}]`, with backpropagation
//!   through time.
//! - [`ModulePool`]: the slow path, any [`modula_nn::Module`] as a module.
//! - [`NaiveLayer`]: the per-row reference implementation used as the test oracle.
//!
//! ```
//! use modula_modular::{Controller, ModularLinear, Routing};
//! use modula_nn::ParamStore;
//! use modula_tensor::{Backend, Cpu};
//! use rand::SeedableRng;
//!
//! let cpu = Cpu::with_threads(1);
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let mut params = ParamStore::new();
//! let (m, k, d) = (4, 2, 8);
//! let controller = Controller::new(&cpu, &mut params, "ctrl", d, m, k, &mut rng);
//! let layer = ModularLinear::new(&cpu, &mut params, "mod", m, d, d, &mut rng);
//!
//! let x = cpu.upload([3, d], &[0.1; 24]);
//! let out = controller.forward(&cpu, &params, &x);
//! let selection = out.sample(&cpu, &mut rng)?;
//! let routing = Routing::new(&selection, m);
//! let (y, _cache) = layer.forward(&cpu, &params, &x, &routing, None);
//! assert_eq!(cpu.shape(&y), [3, d]);
//! # Ok::<(), modula_tensor::BackendError>(())
//! ```

mod controller;
mod conv;
mod gru;
mod linear;
mod pool;
mod reference;
mod selection;

pub use controller::{Controller, ControllerOutput};
pub use conv::{ModularConv2d, ModularConvCache};
pub use gru::{
    ModularGruCache, ModularGruCell, ModularGruModules, ModularGruModulesCache, ModularGruSeq,
    ModularGruStepCache, PreparedStep, StepInputGrads,
};
pub use linear::{ModularCache, ModularLinear, Routed, stacked_glorot};
pub use pool::{ModulePool, PoolCache};
pub use reference::{NaiveGrads, NaiveLayer};
pub use selection::{Routing, Selection};
