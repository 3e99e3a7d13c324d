//! Flattening images to feature rows, which in modula's layout is the identity.

use modula_tensor::Backend;

use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamStore};

/// Flattens each example to one feature row, as between a convolutional stack and a
/// [`crate::Linear`] layer.
///
/// Every tensor is already a `[batch, features]` matrix: images are stored as NHWC rows
/// `[batch, H * W * C]` (see [`modula_tensor::Window2d`]), so the flattened view has exactly the
/// same bytes and shape. `Flatten` therefore changes nothing; it exists so that network
/// definitions read like their usual descriptions, and its backward is the identity too.
///
/// The [`Module`] trait borrows its input, so the module form returns a copy; code that owns
/// the tensor can call [`Flatten::apply`], which moves it through without copying.
///
/// ```
/// use modula_nn::{Ctx, Flatten, Module, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// let cpu = Cpu::with_threads(1);
/// let image = cpu.upload([2, 2 * 2 * 3], &[0.5; 24]); // two 2x2 RGB images, NHWC rows
/// let (flat, _) = Flatten.forward(&cpu, &ParamStore::new(), &image, &mut Ctx::eval());
/// assert_eq!(cpu.shape(&flat), [2, 12]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten;

impl Flatten {
    /// The no-copy form: returns `x` itself, already `[batch, features]`.
    pub fn apply<B: Backend>(self, x: B::Tensor) -> B::Tensor {
        x
    }
}

impl<B: Backend> Module<B> for Flatten {
    /// Nothing: the map is the identity.
    type Cache = ();

    fn forward(&self, b: &B, _p: &ParamStore<B>, x: &B::Tensor, _ctx: &mut Ctx) -> (B::Tensor, ()) {
        (b.duplicate(x), ())
    }

    fn backward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        _cache: (),
        dy: &B::Tensor,
        _g: &mut Grads<B>,
    ) -> B::Tensor {
        b.duplicate(dy)
    }
}
