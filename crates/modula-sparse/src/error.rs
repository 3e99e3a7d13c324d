//! [`SparseError`]: why a sparse matrix handed in from outside was refused.

/// A sparse matrix given as parts (by [`crate::Csr::new`], [`crate::BlockSparse::new`] or a
/// conversion from `sprs`) that breaks the format's rules. The kernels read the parts without
/// bounds checks, so nothing malformed gets past the constructors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SparseError {
    /// The row pointers do not start at 0, decrease, or end past the stored entries.
    #[error(
        "row pointers must start at 0, never decrease and end at the {nnz} stored entries \
         (row {row}); rebuild the matrix from its rows"
    )]
    RowPointers {
        /// The first row whose pointer is wrong.
        row: usize,
        /// The number of stored entries.
        nnz: usize,
    },
    /// A list has the wrong length.
    #[error("{what} has {got} entries, the shape needs {want}")]
    Length {
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the shape and the other lists imply.
        want: usize,
    },
    /// A column index is out of range or not strictly increasing within its row.
    #[error(
        "row {row}: column indices must be below {cols} and strictly increasing; \
         sort and deduplicate each row (sprs's CsMat does)"
    )]
    Columns {
        /// The row (or row block) holding the bad index.
        row: usize,
        /// The number of columns (or column blocks).
        cols: usize,
    },
    /// A dimension or the number of stored entries does not fit the kernels' 32-bit indices.
    #[error("{what} = {value} does not fit in 32-bit indices; split the matrix")]
    TooLarge {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
    },
    /// A block size of zero.
    #[error("block sizes must be at least 1 (got {row_block} x {col_block})")]
    BlockSize {
        /// Rows per block.
        row_block: usize,
        /// Columns per block.
        col_block: usize,
    },
}
