//! [`BlockSparse`]: structured sparsity, where whole column blocks (groups of neurons) are
//! zero across a block of rows.

use std::ops::Range;

use crate::error::SparseError;
use crate::select::Select;

/// A sparse `rows x cols` matrix stored by blocks, on the host: the rows are cut into blocks
/// of `row_block` rows and the columns into blocks of `col_block` columns (the last ones may be
/// shorter); for each row block, the column blocks holding any kept entry are *active* and
/// stored densely, the rest are zero.
///
/// Row block `r` lists its active column blocks (ascending) at positions
/// `block_ptr[r]..block_ptr[r + 1]` of `block_cols`, and stores them side by side as one
/// row-major *panel* of `rows_r x width_r` values (`width_r` the sum of the active blocks'
/// widths) at `panel_ptr[r]..panel_ptr[r + 1]` of `values`. A product with a dense matrix is
/// then one dense product per row block, of the panel with the rows of the dense matrix at the
/// active columns: skipping a block skips its weights entirely, which is where structured
/// sparsity saves more than random sparsity.
///
/// ```
/// use modula_sparse::{BlockSparse, Select};
/// // Two row blocks of two rows, three column blocks of two columns.
/// let x = [1.0, 2.0, 0.0, 0.0, 0.0, 5.0, //
///          0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
///          0.0, 0.0, 3.0, 0.0, 0.0, 0.0, //
///          0.0, 0.0, 0.0, 4.0, 0.0, 0.0];
/// let s = BlockSparse::from_dense(4, 6, &x, 2, 2, Select::NONZERO);
/// assert_eq!(s.active(0), &[0, 2]);
/// assert_eq!(s.active(1), &[1]);
/// assert_eq!(s.panel(1), &[3.0, 0.0, 0.0, 4.0]);
/// assert_eq!(s.to_dense(), x);
/// assert_eq!(s.transpose().to_dense(), s.to_dense_transposed());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSparse {
    rows: usize,
    cols: usize,
    row_block: usize,
    col_block: usize,
    block_ptr: Vec<u32>,
    block_cols: Vec<u32>,
    panel_ptr: Vec<usize>,
    values: Vec<f32>,
}

impl BlockSparse {
    /// A matrix from its parts (see the type's documentation); the panel offsets follow from
    /// the others.
    ///
    /// # Errors
    /// [`SparseError`] when the parts break the format: block sizes of at least 1,
    /// `block_ptr` with one more entry than there are row blocks, non-decreasing from 0 to
    /// `block_cols.len()`, each row block's column blocks strictly increasing and in range,
    /// `values` as long as the panels, sizes that fit in `u32`.
    pub fn new(
        rows: usize,
        cols: usize,
        row_block: usize,
        col_block: usize,
        block_ptr: Vec<u32>,
        block_cols: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self, SparseError> {
        if row_block == 0 || col_block == 0 {
            return Err(SparseError::BlockSize {
                row_block,
                col_block,
            });
        }
        for (what, value) in [
            ("rows", rows),
            ("cols", cols),
            ("active blocks", block_cols.len()),
        ] {
            if u32::try_from(value).is_err() {
                return Err(SparseError::TooLarge { what, value });
            }
        }
        let (row_blocks, col_blocks) = (rows.div_ceil(row_block), cols.div_ceil(col_block));
        if block_ptr.len() != row_blocks + 1 {
            return Err(SparseError::Length {
                what: "block_ptr",
                got: block_ptr.len(),
                want: row_blocks + 1,
            });
        }
        let nnz = block_cols.len();
        if block_ptr[0] != 0 || block_ptr[row_blocks] as usize != nnz {
            return Err(SparseError::RowPointers { row: 0, nnz });
        }
        let mut panel_ptr = Vec::with_capacity(row_blocks + 1);
        panel_ptr.push(0usize);
        for r in 0..row_blocks {
            let (start, end) = (block_ptr[r] as usize, block_ptr[r + 1] as usize);
            if end < start || end > nnz {
                return Err(SparseError::RowPointers { row: r, nnz });
            }
            let active = &block_cols[start..end];
            let increasing = active.windows(2).all(|w| w[0] < w[1]);
            if !increasing || active.last().is_some_and(|&c| c as usize >= col_blocks) {
                return Err(SparseError::Columns {
                    row: r,
                    cols: col_blocks,
                });
            }
            let width: usize = active
                .iter()
                .map(|&c| block_width(cols, col_block, c as usize))
                .sum();
            let height = block_width(rows, row_block, r);
            panel_ptr.push(panel_ptr[r] + height * width);
        }
        if values.len() != panel_ptr[row_blocks] {
            return Err(SparseError::Length {
                what: "values",
                got: values.len(),
                want: panel_ptr[row_blocks],
            });
        }
        Ok(BlockSparse {
            rows,
            cols,
            row_block,
            col_block,
            block_ptr,
            block_cols,
            panel_ptr,
            values,
        })
    }

    /// The block-sparse form of the row-major `rows x cols` matrix `data`: a block is active
    /// when `select` keeps any of its entries, and its entries that `select` drops are stored
    /// as zeros. One pass to find the active blocks, one to copy them.
    ///
    /// # Panics
    /// If `data.len() != rows * cols`, a block size is 0, the rule is invalid
    /// ([`Select::validate`]) or a size does not fit in `u32`.
    #[track_caller]
    pub fn from_dense(
        rows: usize,
        cols: usize,
        data: &[f32],
        row_block: usize,
        col_block: usize,
        select: Select,
    ) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "BlockSparse::from_dense: {} values for a {rows}x{cols} matrix",
            data.len()
        );
        assert!(
            row_block > 0 && col_block > 0,
            "BlockSparse::from_dense: block sizes must be at least 1, got {row_block}x{col_block}"
        );
        select.validate();
        let col_blocks = cols.div_ceil(col_block);
        let mut block_ptr = vec![0u32];
        let (mut block_cols, mut values) = (Vec::new(), Vec::new());
        for r0 in (0..rows).step_by(row_block) {
            let r1 = (r0 + row_block).min(rows);
            let first = block_cols.len();
            for c in 0..col_blocks {
                let span = c * col_block..((c + 1) * col_block).min(cols);
                let active = (r0..r1).any(|i| {
                    data[i * cols..][span.clone()]
                        .iter()
                        .any(|&v| select.keeps(v))
                });
                if active {
                    block_cols.push(c as u32);
                }
            }
            for i in r0..r1 {
                for &c in &block_cols[first..] {
                    let c = c as usize;
                    let span = c * col_block..((c + 1) * col_block).min(cols);
                    values.extend(data[i * cols..][span].iter().map(|&v| select.apply(v)));
                }
            }
            block_ptr.push(u32::try_from(block_cols.len()).expect("too many blocks"));
        }
        BlockSparse::new(
            rows, cols, row_block, col_block, block_ptr, block_cols, values,
        )
        .expect("BlockSparse::from_dense: too large")
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Rows per block.
    pub fn row_block(&self) -> usize {
        self.row_block
    }

    /// Columns per block.
    pub fn col_block(&self) -> usize {
        self.col_block
    }

    /// Number of row blocks.
    pub fn row_blocks(&self) -> usize {
        self.block_ptr.len() - 1
    }

    /// Number of column blocks.
    pub fn col_blocks(&self) -> usize {
        self.cols.div_ceil(self.col_block)
    }

    /// The rows of row block `r`.
    ///
    /// # Panics
    /// If `r` is not a row block.
    #[track_caller]
    pub fn row_range(&self, r: usize) -> Range<usize> {
        assert!(r < self.row_blocks(), "row block {r} out of range");
        r * self.row_block..((r + 1) * self.row_block).min(self.rows)
    }

    /// The active column blocks of row block `r`, ascending.
    ///
    /// # Panics
    /// If `r` is not a row block.
    #[track_caller]
    pub fn active(&self, r: usize) -> &[u32] {
        &self.block_cols[self.block_ptr[r] as usize..self.block_ptr[r + 1] as usize]
    }

    /// The columns of row block `r`'s panel, in panel order: the columns of its active
    /// blocks, concatenated (the rows of the dense operand its products read).
    ///
    /// # Panics
    /// If `r` is not a row block.
    #[track_caller]
    pub fn active_columns(&self, r: usize) -> Vec<u32> {
        self.active(r)
            .iter()
            .flat_map(|&c| {
                let start = c as usize * self.col_block;
                (start..(start + self.col_block).min(self.cols)).map(|j| j as u32)
            })
            .collect()
    }

    /// Row block `r`'s panel: `row_range(r).len()` rows of `active_columns(r).len()` values,
    /// row-major.
    ///
    /// # Panics
    /// If `r` is not a row block.
    #[track_caller]
    pub fn panel(&self, r: usize) -> &[f32] {
        &self.values[self.panel_ptr[r]..self.panel_ptr[r + 1]]
    }

    /// Offsets of the panels in [`BlockSparse::values`] (one more than there are row blocks).
    pub fn panel_ptr(&self) -> &[usize] {
        &self.panel_ptr
    }

    /// Every panel, row block after row block.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Offsets of each row block's active column blocks in [`BlockSparse::block_cols`].
    pub fn block_ptr(&self) -> &[u32] {
        &self.block_ptr
    }

    /// The active column blocks of every row block, row block after row block.
    pub fn block_cols(&self) -> &[u32] {
        &self.block_cols
    }

    /// Fraction of the matrix's elements that lie in active blocks (0 for an empty shape).
    pub fn block_density(&self) -> f64 {
        let size = self.rows * self.cols;
        if size == 0 {
            0.0
        } else {
            self.values.len() as f64 / size as f64
        }
    }

    /// The dense row-major matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for r in 0..self.row_blocks() {
            let cols = self.active_columns(r);
            let panel = self.panel(r);
            for (i, prow) in self.row_range(r).zip(panel.chunks(cols.len().max(1))) {
                for (&j, &v) in cols.iter().zip(prow) {
                    out[i * self.cols + j as usize] = v;
                }
            }
        }
        out
    }

    /// The dense row-major transpose (`cols x rows`), for tests and default bodies.
    pub fn to_dense_transposed(&self) -> Vec<f32> {
        let dense = self.to_dense();
        let mut out = vec![0.0; dense.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                out[j * self.rows + i] = dense[i * self.cols + j];
            }
        }
        out
    }

    /// The transpose in block form, with blocks of `col_block x row_block`: row block `c` of
    /// the result is column block `c` of `self`, active where `self` has it active. The weight
    /// gradient `S^T dY` is a block-sparse product with it.
    pub fn transpose(&self) -> BlockSparse {
        let col_blocks = self.col_blocks();
        // For every column block, the row blocks where it is active (ascending, as rows are
        // visited in order) and where its values start in that row block's panel.
        let mut users: Vec<Vec<(usize, usize)>> = vec![Vec::new(); col_blocks];
        for r in 0..self.row_blocks() {
            let mut offset = 0;
            for &c in self.active(r) {
                users[c as usize].push((r, offset));
                offset += block_width(self.cols, self.col_block, c as usize);
            }
        }
        let mut block_ptr = vec![0u32];
        let (mut block_cols, mut values) = (Vec::new(), Vec::new());
        for (c, list) in users.iter().enumerate() {
            let width = block_width(self.cols, self.col_block, c);
            for a in 0..width {
                for &(r, offset) in list {
                    let panel = self.panel(r);
                    let panel_width = panel.len() / self.row_range(r).len();
                    values.extend(
                        self.row_range(r)
                            .enumerate()
                            .map(|(i, _)| panel[i * panel_width + offset + a]),
                    );
                }
            }
            block_cols.extend(list.iter().map(|&(r, _)| r as u32));
            block_ptr.push(block_cols.len() as u32);
        }
        BlockSparse::new(
            self.cols,
            self.rows,
            self.col_block,
            self.row_block,
            block_ptr,
            block_cols,
            values,
        )
        .expect("the transpose of a valid block matrix is valid")
    }
}

/// Length of block `b` when `len` items are cut into blocks of `block`.
fn block_width(len: usize, block: usize, b: usize) -> usize {
    (len - b * block).min(block)
}
