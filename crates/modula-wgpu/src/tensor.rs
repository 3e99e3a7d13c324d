//! [`WgpuTensor`]: a device-resident matrix.

use modula_tensor::Shape;

/// A row-major f32 matrix in a device buffer.
///
/// Tensors own their buffer and are deliberately not `Clone`: a copy is made with
/// [`modula_tensor::Backend::duplicate`], so two tensors never alias one buffer.
#[derive(Debug)]
pub struct WgpuTensor {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) shape: Shape,
}

impl WgpuTensor {
    /// Shape `[rows, cols]`.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
