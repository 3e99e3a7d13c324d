//! Elementwise activation layers (ReLU, tanh, sigmoid, ...).

use modula_tensor::{Backend, UnaryOp};

use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamStore};

/// An elementwise activation, any [`UnaryOp`]: `Activation(UnaryOp::Relu)` and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activation(pub UnaryOp);

impl Activation {
    /// Rectified linear unit.
    pub const RELU: Activation = Activation(UnaryOp::Relu);
    /// Hyperbolic tangent.
    pub const TANH: Activation = Activation(UnaryOp::Tanh);
    /// Logistic sigmoid.
    pub const SIGMOID: Activation = Activation(UnaryOp::Sigmoid);
}

impl<B: Backend> Module<B> for Activation {
    /// Input and output: derivatives use whichever is cheaper.
    type Cache = (B::Tensor, B::Tensor);

    fn forward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        x: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, Self::Cache) {
        let y = b.unary(self.0, x);
        let cache = (b.duplicate(x), b.duplicate(&y));
        (y, cache)
    }

    fn backward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        (x, y): Self::Cache,
        dy: &B::Tensor,
        _g: &mut Grads<B>,
    ) -> B::Tensor {
        b.unary_backward(self.0, &x, &y, dy)
    }
}
