//! [`SparseBackend`]: the sparse products as callers see them, checked once in front of every
//! backend's [`SparseKernels`], as `modula_tensor::Backend` is in front of `Kernels`.

use modula_tensor::{Backend, BackendError, Shape, check};

use crate::block::BlockSparse;
use crate::csr::Csr;
use crate::kernels::SparseKernels;
use crate::select::Select;

/// Sparse-times-dense products on a backend: the trait layers are generic over when they use
/// sparse activations.
///
/// Nobody implements it by hand: a backend implements [`SparseKernels`] and gets this trait
/// from a blanket implementation that checks each call's shapes (with the panics documented
/// below) and then calls the kernel. The sparse operands ([`Csr`], [`BlockSparse`]) live on the
/// host, like the index lists of `Backend`; the dense ones are backend tensors.
///
/// ```
/// use modula_sparse::{Select, SparseBackend};
/// use modula_tensor::{Backend, Reference};
/// let b = Reference;
/// let x = b.upload([2, 3], &[0.0, 1.0, 0.0, 2.0, 0.0, 0.0]);
/// let w = b.upload([3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// let s = b.sparsify(&x, Select::NONZERO)?;
/// let y = b.sparse_linear(&s, &w, None);
/// assert_eq!(b.download(&y)?, vec![3.0, 4.0, 2.0, 4.0]);
/// # Ok::<(), modula_tensor::BackendError>(())
/// ```
pub trait SparseBackend: Backend {
    /// The CSR form of `x`: the entries `select` keeps.
    ///
    /// # Errors
    /// A device error, where building the form needs the data on the host.
    ///
    /// # Panics
    /// If the rule is invalid ([`Select::validate`]) or the kept entries do not fit in `u32`.
    fn sparsify(&self, x: &Self::Tensor, select: Select) -> Result<Csr, BackendError>;

    /// How many entries of `x` `select` keeps (the density a dispatching layer measures).
    ///
    /// # Errors
    /// A device error, where counting needs the data on the host.
    ///
    /// # Panics
    /// If the rule is invalid.
    fn count_kept(&self, x: &Self::Tensor, select: Select) -> Result<usize, BackendError>;

    /// The dense tensor of `s`.
    fn densify(&self, s: &Csr) -> Self::Tensor;

    /// `C = S B + beta C + 1 bias^T`, with `S [n x k]` sparse, `B [k x m]` and `C [n x m]`
    /// dense, and an optional `bias [1 x m]`. With `beta == 0` the old `C` is ignored (even
    /// NaN). The forward of a layer (`B` its weight) and, with `S` transposed
    /// ([`Csr::transpose`]) and `B = dY`, its weight gradient `S^T dY`.
    ///
    /// # Panics
    /// If the shapes do not chain or `bias` is not `[1, m]`.
    fn sparse_matmul(
        &self,
        s: &Csr,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    );

    /// `Y = S W + 1 bias^T` into a new tensor: [`SparseBackend::sparse_matmul`] for a layer's
    /// forward.
    ///
    /// # Panics
    /// As [`SparseBackend::sparse_matmul`].
    fn sparse_linear(&self, s: &Csr, w: &Self::Tensor, bias: Option<&Self::Tensor>)
    -> Self::Tensor;

    /// The input gradient of `Y = S W` sampled at the pattern of `S`: `(dY W^T)[i, p]` where
    /// `S` stores `(i, p)`, zero elsewhere (`[n x k]`, dense). For the ReLU output `S` of a
    /// pre-activation `Z` this is exactly `dL/dZ`, and only those entries are computed.
    ///
    /// # Panics
    /// If `dy` is not `[n, m]` or `w` not `[k, m]`.
    fn sampled_matmul_t(&self, s: &Csr, dy: &Self::Tensor, w: &Self::Tensor) -> Self::Tensor;

    /// The block-sparse form of `x`, with blocks of `row_block x col_block`.
    ///
    /// # Errors
    /// A device error, where building the form needs the data on the host.
    ///
    /// # Panics
    /// If a block size is 0, the rule is invalid or a size does not fit in `u32`.
    fn sparsify_blocks(
        &self,
        x: &Self::Tensor,
        row_block: usize,
        col_block: usize,
        select: Select,
    ) -> Result<BlockSparse, BackendError>;

    /// The dense tensor of `s`.
    fn densify_blocks(&self, s: &BlockSparse) -> Self::Tensor;

    /// [`SparseBackend::sparse_matmul`] with a block-sparse `S`.
    ///
    /// # Panics
    /// As [`SparseBackend::sparse_matmul`].
    fn block_matmul(
        &self,
        s: &BlockSparse,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    );

    /// [`SparseBackend::sparse_linear`] with a block-sparse `S`.
    ///
    /// # Panics
    /// As [`SparseBackend::sparse_matmul`].
    fn block_linear(
        &self,
        s: &BlockSparse,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor;

    /// [`SparseBackend::sampled_matmul_t`] with a block-sparse `S`: `dY W^T` inside its active
    /// blocks, zero elsewhere.
    ///
    /// # Panics
    /// As [`SparseBackend::sampled_matmul_t`].
    fn block_sampled_matmul_t(
        &self,
        s: &BlockSparse,
        dy: &Self::Tensor,
        w: &Self::Tensor,
    ) -> Self::Tensor;
}

/// Panics unless `b = [k, m]` follows `s_shape = [n, k]` into `c = [n, m]` and `bias` (if
/// any) is `[1, m]`.
#[track_caller]
fn product<K: SparseKernels>(
    k: &K,
    op: &str,
    s_shape: Shape,
    b: &K::Tensor,
    bias: Option<&K::Tensor>,
    c: &K::Tensor,
) {
    let b = Backend::shape(k, b);
    assert!(
        s_shape[1] == b[0],
        "{op}: inner dimensions differ: S is {s_shape:?}, B is {b:?}"
    );
    check::same_shape(op, [s_shape[0], b[1]], Backend::shape(k, c));
    if let Some(bias) = bias {
        check::same_shape(op, [1, b[1]], Backend::shape(k, bias));
    }
}

/// Panics unless `dy = [n, m]` and `w = [k, m]` for `s_shape = [n, k]`.
#[track_caller]
fn sampled<K: SparseKernels>(op: &str, k: &K, s_shape: Shape, dy: &K::Tensor, w: &K::Tensor) {
    let dy = Backend::shape(k, dy);
    check::same_rows(op, s_shape, dy);
    check::same_shape(op, [s_shape[1], dy[1]], Backend::shape(k, w));
}

/// A new `[rows, cols(w)]` output for a layer's forward.
fn output<K: SparseKernels>(k: &K, rows: usize, w: &K::Tensor) -> K::Tensor {
    Backend::zeros(k, [rows, Backend::shape(k, w)[1]])
}

impl<K: SparseKernels> SparseBackend for K {
    #[track_caller]
    fn sparsify(&self, x: &Self::Tensor, select: Select) -> Result<Csr, BackendError> {
        select.validate();
        SparseKernels::sparsify(self, x, select)
    }

    #[track_caller]
    fn count_kept(&self, x: &Self::Tensor, select: Select) -> Result<usize, BackendError> {
        select.validate();
        SparseKernels::count_kept(self, x, select)
    }

    fn densify(&self, s: &Csr) -> Self::Tensor {
        SparseKernels::densify(self, s)
    }

    #[track_caller]
    fn sparse_matmul(
        &self,
        s: &Csr,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        product(self, "sparse_matmul", s.shape(), b, bias, c);
        SparseKernels::sparse_matmul(self, s, b, bias, beta, c);
    }

    #[track_caller]
    fn sparse_linear(
        &self,
        s: &Csr,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        let mut y = output(self, s.rows(), w);
        SparseBackend::sparse_matmul(self, s, w, bias, 0.0, &mut y);
        y
    }

    #[track_caller]
    fn sampled_matmul_t(&self, s: &Csr, dy: &Self::Tensor, w: &Self::Tensor) -> Self::Tensor {
        sampled("sampled_matmul_t", self, s.shape(), dy, w);
        SparseKernels::sampled_matmul_t(self, s, dy, w)
    }

    #[track_caller]
    fn sparsify_blocks(
        &self,
        x: &Self::Tensor,
        row_block: usize,
        col_block: usize,
        select: Select,
    ) -> Result<BlockSparse, BackendError> {
        assert!(
            row_block > 0 && col_block > 0,
            "sparsify_blocks: block sizes must be at least 1, got {row_block}x{col_block}"
        );
        select.validate();
        SparseKernels::sparsify_blocks(self, x, row_block, col_block, select)
    }

    fn densify_blocks(&self, s: &BlockSparse) -> Self::Tensor {
        SparseKernels::densify_blocks(self, s)
    }

    #[track_caller]
    fn block_matmul(
        &self,
        s: &BlockSparse,
        b: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        beta: f32,
        c: &mut Self::Tensor,
    ) {
        product(self, "block_matmul", s.shape(), b, bias, c);
        SparseKernels::block_matmul(self, s, b, bias, beta, c);
    }

    #[track_caller]
    fn block_linear(
        &self,
        s: &BlockSparse,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        let mut y = output(self, s.rows(), w);
        SparseBackend::block_matmul(self, s, w, bias, 0.0, &mut y);
        y
    }

    #[track_caller]
    fn block_sampled_matmul_t(
        &self,
        s: &BlockSparse,
        dy: &Self::Tensor,
        w: &Self::Tensor,
    ) -> Self::Tensor {
        sampled("block_sampled_matmul_t", self, s.shape(), dy, w);
        SparseKernels::block_sampled_matmul_t(self, s, dy, w)
    }
}
