//! [`SparseKernels`]: what a backend implements to accelerate sparse products. Every method
//! has a default body built from the core kernels, so `impl SparseKernels for X {}` is a
//! correct (dense-speed) implementation.

use modula_tensor::{BackendError, GroupedKernels, Kernels, Reference, Transpose};

use crate::block::BlockSparse;
use crate::csr::Csr;
use crate::select::Select;

/// The sparse products, an extension of the core kernels. Callers use
/// [`crate::SparseBackend`], which every type implementing this trait gets and which checks
/// each call before it reaches a kernel here; so a kernel may assume a well-formed call.
///
/// The default bodies densify the sparse operand and call dense core kernels: correct on
/// every backend and no faster than dense. `modula-cpu`'s `Cpu` overrides all but
/// [`SparseKernels::densify_blocks`] (whose default, a host copy, is what it would do); the
/// WGSL backend overrides [`SparseKernels::sparse_matmul`].
pub trait SparseKernels: GroupedKernels {
    /// Kernel of [`SparseBackend::sparsify`](crate::SparseBackend::sparsify). The default
    /// downloads `x` and builds the form on the host.
    fn sparsify(&self, x: &Self::Tensor, select: Select) -> Result<Csr, BackendError> {
        let [rows, cols] = Kernels::shape(self, x);
        Ok(Csr::from_dense(
            rows,
            cols,
            &Kernels::download(self, x)?,
            select,
        ))
    }

    /// Kernel of [`SparseBackend::count_kept`](crate::SparseBackend::count_kept). The
    /// default downloads `x` and counts on the host.
    fn count_kept(&self, x: &Self::Tensor, select: Select) -> Result<usize, BackendError> {
        let data = Kernels::download(self, x)?;
        Ok(data.iter().filter(|&&v| select.keeps(v)).count())
    }

    /// Kernel of [`SparseBackend::densify`](crate::SparseBackend::densify). The default
    /// uploads the host-densified matrix.
    fn densify(&self, s: &Csr) -> Self::Tensor {
        Kernels::upload(self, s.shape(), &s.to_dense())
    }

    /// Kernel of [`SparseBackend::sparse_matmul`](crate::SparseBackend::sparse_matmul): `C = S B
    /// + beta C + 1 bias^T`. The default densifies `S` and calls `matmul` and `add_row`.
    fn sparse_matmul(
        &self,
        s: &Csr,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        let dense = SparseKernels::densify(self, s);
        dense_product(self, &dense, b, bias, beta, c);
    }

    /// Kernel of [`SparseBackend::sampled_matmul_t`](crate::SparseBackend::sampled_matmul_t):
    /// `(dY W^T)` at the stored entries of `S`, zero elsewhere. The default computes the whole
    /// `dY W^T` and keeps the pattern with a gather and a scatter (not a multiplication by a
    /// mask, which would turn an infinity outside the pattern into NaN).
    fn sampled_matmul_t(&self, s: &Csr, dy: &Self::Tensor, w: &Self::Tensor) -> Self::Tensor {
        keep_pattern(self, s.shape(), dy, w, &s.flat_positions())
    }

    /// Kernel of [`SparseBackend::sparsify_blocks`](crate::SparseBackend::sparsify_blocks).
    /// The default downloads `x` and builds the form on the host.
    fn sparsify_blocks(
        &self,
        x: &Self::Tensor,
        row_block: usize,
        col_block: usize,
        select: Select,
    ) -> Result<BlockSparse, BackendError> {
        let [rows, cols] = Kernels::shape(self, x);
        let data = Kernels::download(self, x)?;
        Ok(BlockSparse::from_dense(
            rows, cols, &data, row_block, col_block, select,
        ))
    }

    /// Kernel of [`SparseBackend::densify_blocks`](crate::SparseBackend::densify_blocks). The
    /// default uploads the host-densified matrix.
    fn densify_blocks(&self, s: &BlockSparse) -> Self::Tensor {
        Kernels::upload(self, s.shape(), &s.to_dense())
    }

    /// Kernel of [`SparseBackend::block_matmul`](crate::SparseBackend::block_matmul): `C = S B
    /// + beta C + 1 bias^T`. The default densifies `S`.
    fn block_matmul(
        &self,
        s: &BlockSparse,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        let dense = SparseKernels::densify_blocks(self, s);
        dense_product(self, &dense, b, bias, beta, c);
    }

    /// Kernel of
    /// [`SparseBackend::block_sampled_matmul_t`](crate::SparseBackend::block_sampled_matmul_t):
    /// `(dY W^T)` inside the active blocks of `S`, zero elsewhere. The default computes the
    /// whole product and keeps the blocks.
    fn block_sampled_matmul_t(
        &self,
        s: &BlockSparse,
        dy: &Self::Tensor,
        w: &Self::Tensor,
    ) -> Self::Tensor {
        let cols = s.cols();
        let positions: Vec<u32> = (0..s.row_blocks())
            .flat_map(|r| {
                let active = s.active_columns(r);
                s.row_range(r)
                    .flat_map(move |i| {
                        active
                            .clone()
                            .into_iter()
                            .map(move |j| (i * cols) as u32 + j)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        keep_pattern(self, s.shape(), dy, w, &positions)
    }
}

/// `C = D B + beta C + 1 bias^T` with core kernels, for the default bodies.
fn dense_product<K: Kernels>(
    k: &K,
    d: &K::Tensor,
    b: &K::Tensor,
    bias: Option<&K::Tensor>,
    beta: f32,
    c: &mut K::Tensor,
) {
    k.matmul(1.0, d, Transpose::No, b, Transpose::No, beta, c);
    if let Some(bias) = bias {
        k.add_row(c, bias);
    }
}

/// `dY W^T` at the flat positions `keep` of a `shape` matrix, zero elsewhere, with core
/// kernels: the whole product, a gather of the kept elements and a scatter into zeros.
fn keep_pattern<K: Kernels>(
    k: &K,
    shape: [usize; 2],
    dy: &K::Tensor,
    w: &K::Tensor,
    keep: &[u32],
) -> K::Tensor {
    let mut full = k.zeros(shape);
    k.matmul(1.0, dy, Transpose::No, w, Transpose::Yes, 0.0, &mut full);
    let column = k.reshape(full, [shape[0] * shape[1], 1]);
    let kept = k.gather_rows(&column, keep);
    let mut out = k.zeros([shape[0] * shape[1], 1]);
    k.scatter_add_rows(&mut out, &kept, keep);
    k.reshape(out, shape)
}

/// The oracle runs the default bodies: dense products on plain loops.
impl SparseKernels for Reference {}

/// The default bodies on a backend's core kernels, for the conformance of the defaults.
#[cfg(feature = "conformance")]
impl<B: Kernels> SparseKernels for modula_tensor::conformance::CoreOnly<B> {}
