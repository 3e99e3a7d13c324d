//! [`GroupedProduct`]: the product that follows a grouped layer, run by the block-sparse engine
//! so that a group with no active neuron in a row costs nothing for that row.

use modula_sparse::{BlockSparse, Select, SparseBackend};
use modula_tensor::{Backend, BackendError};

use crate::partition::Partition;

/// `y = a W + bias` for the activations `a` (`[n, width]`) of a layer whose neurons are grouped
/// by a [`Partition`]: the neurons are reordered group by group (and the rows of `W` with
/// them), so that each group is one column block of 1 row x `group_size` columns of a
/// [`BlockSparse`] matrix, and one block-sparse product of the engine computes `y`.
///
/// Skipping a block whose activations are all zero leaves out terms that are exactly zero, so
/// [`GroupedProduct::forward`] with `skip` gives the same bits as without (the claim the tests
/// check on random inputs).
#[derive(Debug)]
pub struct GroupedProduct<B: Backend> {
    order: Vec<u32>,
    groups: usize,
    group_size: usize,
    /// `W` with its rows in the partition's order, `[width, m]`.
    weight: B::Tensor,
    /// `[1, m]`.
    bias: B::Tensor,
}

/// What a [`GroupedProduct::forward`] computed.
#[derive(Debug)]
pub struct Grouped<T> {
    /// `a W + bias`, `[n, m]`.
    pub output: T,
    /// The (row, group) blocks multiplied, out of `n * groups`.
    pub blocks: usize,
}

impl<B: SparseBackend> GroupedProduct<B> {
    /// The product with `weight` (`[width, m]`) and `bias` (`[1, m]`) after a layer grouped
    /// by `partition`.
    ///
    /// # Panics
    /// If `weight` does not have one row per neuron of the partition or `bias` is not
    /// `[1, m]`.
    #[track_caller]
    pub fn new(b: &B, partition: &Partition, weight: &B::Tensor, bias: &B::Tensor) -> Self {
        let [rows, m] = b.shape(weight);
        assert_eq!(rows, partition.width(), "one weight row per neuron");
        assert_eq!(b.shape(bias), [1, m], "the bias must be [1, m]");
        GroupedProduct {
            order: partition.order().to_vec(),
            groups: partition.groups(),
            group_size: partition.group_size(),
            weight: b.gather_rows(weight, partition.order()),
            bias: b.duplicate(bias),
        }
    }

    /// `a W + bias` (`a` the layer's activations, `[n, width]`), as one block-sparse product:
    /// with `skip`, each row multiplies only its groups holding a non-zero activation;
    /// without, every group of every row.
    ///
    /// # Errors
    /// A device error while reading the activations.
    ///
    /// # Panics
    /// If `a` is not `[n, width]`.
    #[track_caller]
    pub fn forward(
        &self,
        b: &B,
        a: &B::Tensor,
        skip: bool,
    ) -> Result<Grouped<B::Tensor>, BackendError> {
        let [n, width] = b.shape(a);
        assert_eq!(width, self.order.len(), "activations of another layer");
        let host = b.download(a)?;
        let mut permuted = Vec::with_capacity(host.len());
        for row in host.chunks(width.max(1)).take(n) {
            permuted.extend(self.order.iter().map(|&i| row[i as usize]));
        }
        let blocks = if skip {
            BlockSparse::from_dense(n, width, &permuted, 1, self.group_size, Select::NONZERO)
        } else {
            let block_ptr = (0..=n).map(|r| (r * self.groups) as u32).collect();
            let block_cols = (0..n).flat_map(|_| 0..self.groups as u32).collect();
            BlockSparse::new(
                n,
                width,
                1,
                self.group_size,
                block_ptr,
                block_cols,
                permuted,
            )
            .expect("every block of a well-formed matrix")
        };
        Ok(Grouped {
            blocks: blocks.block_cols().len(),
            output: b.block_linear(&blocks, &self.weight, Some(&self.bias)),
        })
    }
}
