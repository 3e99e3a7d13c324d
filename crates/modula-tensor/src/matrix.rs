//! [`Matrix`]: a plain row-major `f32` matrix in host memory, the tensor of the
//! [`crate::Reference`] backend.

use std::ops::{Index, IndexMut};

use crate::ops::Shape;

/// A row-major `f32` matrix in a `Vec`, indexed by `[row, col]`. It is deliberately plain (no
/// strides, no views) so that the reference backend built on it reads like its definitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    shape: Shape,
    data: Vec<f32>,
}

impl Matrix {
    /// A matrix of zeros.
    pub fn zeros(shape: Shape) -> Self {
        Matrix::filled(shape, 0.0)
    }

    /// A matrix with every element `value`.
    pub fn filled(shape: Shape, value: f32) -> Self {
        Matrix {
            shape,
            data: vec![value; shape[0] * shape[1]],
        }
    }

    /// The matrix whose element `[i, j]` is `f(i, j)`.
    pub fn from_fn(shape: Shape, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let data = (0..shape[0])
            .flat_map(|i| (0..shape[1]).map(move |j| (i, j)))
            .map(|(i, j)| f(i, j))
            .collect();
        Matrix { shape, data }
    }

    /// The matrix holding `data` row-major.
    ///
    /// # Panics
    /// If `data.len()` is not `shape[0] * shape[1]`.
    #[track_caller]
    pub fn from_vec(shape: Shape, data: Vec<f32>) -> Self {
        assert!(
            data.len() == shape[0] * shape[1],
            "Matrix: shape {shape:?} needs {} values, got {}",
            shape[0] * shape[1],
            data.len()
        );
        Matrix { shape, data }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.shape[1]
    }

    /// The elements, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The elements, row-major, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The same elements under another shape of the same size.
    ///
    /// # Panics
    /// If the element counts differ.
    #[track_caller]
    pub fn reshape(self, shape: Shape) -> Self {
        Matrix::from_vec(shape, self.data)
    }
}

impl Index<[usize; 2]> for Matrix {
    type Output = f32;

    #[track_caller]
    fn index(&self, [i, j]: [usize; 2]) -> &f32 {
        assert!(
            i < self.shape[0] && j < self.shape[1],
            "index [{i}, {j}] out of bounds for {:?}",
            self.shape
        );
        &self.data[i * self.shape[1] + j]
    }
}

impl IndexMut<[usize; 2]> for Matrix {
    #[track_caller]
    fn index_mut(&mut self, [i, j]: [usize; 2]) -> &mut f32 {
        assert!(
            i < self.shape[0] && j < self.shape[1],
            "index [{i}, {j}] out of bounds for {:?}",
            self.shape
        );
        &mut self.data[i * self.shape[1] + j]
    }
}
