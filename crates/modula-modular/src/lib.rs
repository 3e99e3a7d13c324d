#![doc = include_str!("../README.md")]

mod controller;
mod conv;
mod gating;
mod groups;
mod gru;
mod linear;
mod pool;
mod reference;
mod selection;
mod shared;

pub use controller::{Controller, ControllerOutput, draw_distinct};
pub use conv::{ModularConv2d, ModularConvCache};
pub use gating::{gated_sum, gated_sum_backward, pair_gates};
pub use groups::{GroupedRelu, GroupedReluCache};
pub use gru::{
    ModularGruCache, ModularGruCell, ModularGruModules, ModularGruModulesCache, ModularGruSeq,
    ModularGruStepCache, PreparedStep, StepInputGrads,
};
pub use linear::{ModularCache, ModularLinear, Routed, stacked_glorot};
pub use pool::{ModulePool, PoolCache};
pub use reference::{NaiveGrads, NaiveLayer};
pub use selection::{Routing, Selection};
pub use shared::SharedBase;
