//! The WGSL backend's sparse kernel: the CSR forward product. The other sparse operations
//! run the default bodies of `SparseKernels` (built from this backend's core kernels).

use modula_sparse::{Csr, SparseKernels};

use crate::Wgpu;
use crate::device::{Bind, Params};
use crate::shaders::{Kernel, SPARSE};
use crate::tensor::WgpuTensor;

/// `sparse_matmul` uploads the CSR parts (row pointers, columns and values in one index list)
/// and runs one thread per output element; building the CSR form (`sparsify`) downloads the
/// activation, as the default body does.
impl SparseKernels for Wgpu {
    fn sparse_matmul(
        &self,
        s: &Csr,
        b: &WgpuTensor,
        bias: Option<&WgpuTensor>,
        beta: f32,
        c: &mut WgpuTensor,
    ) {
        let (n, m) = (s.rows(), b.shape[1]);
        if n == 0 || m == 0 {
            return;
        }
        let mut parts = Vec::with_capacity(s.indptr().len() + 2 * s.nnz());
        parts.extend_from_slice(s.indptr());
        parts.extend_from_slice(s.indices());
        parts.extend(s.values().iter().map(|v| v.to_bits()));
        let mut rec = self.inner.recorder();
        let list = rec.indices(&parts);
        let params = Params::default()
            .u(0, n)
            .u(1, m)
            .u(2, usize::from(bias.is_some()))
            .f(3, beta)
            .u(4, 0)
            .u(5, s.indptr().len())
            .u(6, s.indptr().len() + s.nnz());
        let bias = bias.map_or(Bind::Unused, Bind::Tensor);
        rec.dispatch(
            Kernel::new(&SPARSE, "csr_matmul"),
            params,
            &[Bind::Tensor(b), Bind::Indices(&list), bias, Bind::Tensor(c)],
            self.stride_groups(n * m),
        );
    }
}
