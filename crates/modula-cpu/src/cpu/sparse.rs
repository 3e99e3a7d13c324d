//! The CPU backend's sparse kernels: `Cpu` tensors are host slices, so every kernel of
//! [`crate::sparse`] runs on them in place, split across the backend's team of threads.

use ndarray::Array2;

use modula_sparse::{BlockSparse, Csr, Select, SparseKernels};
use modula_tensor::BackendError;

use super::{Cpu, slice, slice_mut};
use crate::gemm::Parallelism;
use crate::sparse::{self, Isa};

impl Cpu {
    /// Runs a sparse kernel with this backend's threads: split on its team when it has more
    /// than one and the kernel has at least `min` units of `work` (multiply-adds or elements),
    /// else on the caller alone (a split costs more than a small product takes).
    fn sparse_run<R>(&self, work: usize, min: usize, f: impl FnOnce(Parallelism<'_>) -> R) -> R {
        if self.threads() > 1 && work >= min {
            f(Parallelism::Team(self.team()))
        } else {
            f(Parallelism::Sequential)
        }
    }
}

/// Every sparse product runs the AVX-512 kernels where the CPU has them, else the portable
/// ones (`crate::sparse` takes the choice as an argument, so tests run both).
impl SparseKernels for Cpu {
    fn sparsify(&self, x: &Array2<f32>, select: Select) -> Result<Csr, BackendError> {
        let (rows, cols) = x.dim();
        Ok(self.sparse_run(x.len(), sparse::PAR_MIN_ELEMS, |t| {
            sparse::sparsify(Isa::detect(), slice(x), rows, cols, select, t)
        }))
    }

    fn count_kept(&self, x: &Array2<f32>, select: Select) -> Result<usize, BackendError> {
        Ok(self.sparse_run(x.len(), sparse::PAR_MIN_ELEMS, |t| {
            sparse::count_kept(Isa::detect(), slice(x), select, t)
        }))
    }

    fn densify(&self, s: &Csr) -> Array2<f32> {
        let mut out = Array2::zeros((s.rows(), s.cols()));
        let data = slice_mut(&mut out);
        for i in 0..s.rows() {
            let (cols, vals) = s.row(i);
            let row = &mut data[i * s.cols()..];
            for (&j, &v) in cols.iter().zip(vals) {
                row[j as usize] = v;
            }
        }
        out
    }

    fn sparse_matmul(
        &self,
        s: &Csr,
        b: &Array2<f32>,
        bias: Option<&Array2<f32>>,
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        let m = b.ncols();
        let (b, bias, c) = (slice(b), bias.map(slice), slice_mut(c));
        self.sparse_run(s.nnz() * m, sparse::PAR_MIN_MACS, |t| {
            sparse::csr_matmul(Isa::detect(), s, b, m, bias, beta, c, t)
        });
    }

    fn sampled_matmul_t(&self, s: &Csr, dy: &Array2<f32>, w: &Array2<f32>) -> Array2<f32> {
        let m = dy.ncols();
        let mut out = Array2::zeros((s.rows(), s.cols()));
        let (dy, w, o) = (slice(dy), slice(w), slice_mut(&mut out));
        self.sparse_run(s.nnz() * m, sparse::PAR_MIN_MACS, |t| {
            sparse::sampled_matmul_t(Isa::detect(), s, dy, w, m, o, t)
        });
        out
    }

    fn sparsify_blocks(
        &self,
        x: &Array2<f32>,
        row_block: usize,
        col_block: usize,
        select: Select,
    ) -> Result<BlockSparse, BackendError> {
        let (rows, cols) = x.dim();
        let data = slice(x);
        Ok(self.sparse_run(data.len(), sparse::PAR_MIN_ELEMS, |t| {
            sparse::sparsify_blocks(
                Isa::detect(),
                data,
                rows,
                cols,
                row_block,
                col_block,
                select,
                t,
            )
        }))
    }

    fn block_matmul(
        &self,
        s: &BlockSparse,
        b: &Array2<f32>,
        bias: Option<&Array2<f32>>,
        beta: f32,
        c: &mut Array2<f32>,
    ) {
        let m = b.ncols();
        let (b, bias, c) = (slice(b), bias.map(slice), slice_mut(c));
        self.sparse_run(s.values().len() * m, sparse::PAR_MIN_MACS, |t| {
            sparse::block_matmul(Isa::detect(), s, b, m, bias, beta, c, t)
        });
    }

    fn block_sampled_matmul_t(
        &self,
        s: &BlockSparse,
        dy: &Array2<f32>,
        w: &Array2<f32>,
    ) -> Array2<f32> {
        let m = dy.ncols();
        let mut out = Array2::zeros((s.rows(), s.cols()));
        let (dy, w, o) = (slice(dy), slice(w), slice_mut(&mut out));
        self.sparse_run(s.values().len() * m, sparse::PAR_MIN_MACS, |t| {
            sparse::block_sampled_matmul_t(Isa::detect(), s, dy, w, m, o, t)
        });
        out
    }
}
