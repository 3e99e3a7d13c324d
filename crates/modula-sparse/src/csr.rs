//! [`Csr`]: compressed sparse rows, the format of randomly sparse activations.

use crate::error::SparseError;
use crate::select::Select;

/// A sparse `rows x cols` matrix in compressed sparse row form, on the host.
///
/// Row `i` stores its entries at positions `indptr[i]..indptr[i + 1]` of `indices` (their
/// columns, strictly increasing) and `values`. Indices are `u32`, as every index list of
/// modula is, so the kernels stream half the bytes that `usize` would cost.
///
/// The parts are private and every constructor checks them, because the fast kernels read
/// rows of the right-hand side at the stored columns without bounds checks.
///
/// ```
/// use modula_sparse::{Csr, Select};
/// let x = [0.0, 2.0, 0.0, //
///          0.0, 0.0, 0.0, //
///          1.0, 0.0, 3.0];
/// let s = Csr::from_dense(3, 3, &x, Select::NONZERO);
/// assert_eq!(s.indptr(), &[0, 1, 1, 3]);
/// assert_eq!(s.indices(), &[1, 0, 2]);
/// assert_eq!(s.values(), &[2.0, 1.0, 3.0]);
/// assert_eq!(s.to_dense(), x);
/// assert_eq!(s.transpose().transpose(), s);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Csr {
    rows: usize,
    cols: usize,
    indptr: Vec<u32>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// Fails unless `value` fits in a `u32` index.
fn fits(what: &'static str, value: usize) -> Result<(), SparseError> {
    if u32::try_from(value).is_ok() {
        Ok(())
    } else {
        Err(SparseError::TooLarge { what, value })
    }
}

impl Csr {
    /// A matrix from its parts.
    ///
    /// # Errors
    /// [`SparseError`] when the parts break the format: `indptr` must hold `rows + 1`
    /// non-decreasing offsets from 0 to `indices.len() == values.len()`, each row's columns
    /// must be strictly increasing and below `cols`, and every size must fit in `u32`.
    pub fn new(
        rows: usize,
        cols: usize,
        indptr: Vec<u32>,
        indices: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self, SparseError> {
        fits("rows", rows)?;
        fits("cols", cols)?;
        fits("stored entries", indices.len())?;
        if indptr.len() != rows + 1 {
            return Err(SparseError::Length {
                what: "indptr",
                got: indptr.len(),
                want: rows + 1,
            });
        }
        if values.len() != indices.len() {
            return Err(SparseError::Length {
                what: "values",
                got: values.len(),
                want: indices.len(),
            });
        }
        let nnz = indices.len();
        if indptr[0] != 0 {
            return Err(SparseError::RowPointers { row: 0, nnz });
        }
        for i in 0..rows {
            let (start, end) = (indptr[i] as usize, indptr[i + 1] as usize);
            if end < start || end > nnz || (i + 1 == rows && end != nnz) {
                return Err(SparseError::RowPointers { row: i, nnz });
            }
            let row = &indices[start..end];
            let increasing = row.windows(2).all(|w| w[0] < w[1]);
            if !increasing || row.last().is_some_and(|&c| c as usize >= cols) {
                return Err(SparseError::Columns { row: i, cols });
            }
        }
        if rows == 0 && nnz != 0 {
            return Err(SparseError::RowPointers { row: 0, nnz });
        }
        Ok(Csr {
            rows,
            cols,
            indptr,
            indices,
            values,
        })
    }

    /// A matrix from parts that a trusted builder (a backend's kernel) made.
    ///
    /// # Safety
    /// The parts must satisfy everything [`Csr::new`] checks: kernels index the right-hand
    /// side with the stored columns without bounds checks.
    pub unsafe fn from_parts_unchecked(
        rows: usize,
        cols: usize,
        indptr: Vec<u32>,
        indices: Vec<u32>,
        values: Vec<f32>,
    ) -> Self {
        debug_assert!(
            Csr::new(rows, cols, indptr.clone(), indices.clone(), values.clone()).is_ok(),
            "Csr::from_parts_unchecked: malformed parts"
        );
        Csr {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    /// The sparse form of the row-major `rows x cols` matrix `data`: the entries `select`
    /// keeps, in one pass. (This is the slow, obviously correct builder; backends have faster
    /// ones behind `SparseBackend::sparsify`.)
    ///
    /// # Panics
    /// If `data.len() != rows * cols`, the rule is invalid ([`Select::validate`]), or a
    /// dimension or the number of kept entries does not fit in `u32`.
    #[track_caller]
    pub fn from_dense(rows: usize, cols: usize, data: &[f32], select: Select) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "Csr::from_dense: {} values for a {rows}x{cols} matrix",
            data.len()
        );
        select.validate();
        let mut indptr = Vec::with_capacity(rows + 1);
        let (mut indices, mut values) = (Vec::new(), Vec::new());
        indptr.push(0u32);
        for row in data.chunks(cols.max(1)).take(rows) {
            for (j, &v) in row.iter().enumerate() {
                if select.keeps(v) {
                    indices.push(j as u32);
                    values.push(v);
                }
            }
            let nnz = u32::try_from(indices.len()).expect("Csr::from_dense: too many entries");
            indptr.push(nnz);
        }
        indptr.resize(rows + 1, 0);
        Csr::new(rows, cols, indptr, indices, values).expect("Csr::from_dense: too large")
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

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Stored entries per element (0 for an empty shape).
    pub fn density(&self) -> f64 {
        let size = self.rows * self.cols;
        if size == 0 {
            0.0
        } else {
            self.nnz() as f64 / size as f64
        }
    }

    /// Row offsets into [`Csr::indices`] and [`Csr::values`] (`rows + 1` of them).
    pub fn indptr(&self) -> &[u32] {
        &self.indptr
    }

    /// Column of every stored entry, row by row.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Value of every stored entry, row by row.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Row `i`'s columns and values.
    ///
    /// # Panics
    /// If `i >= rows`.
    #[track_caller]
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let range = self.indptr[i] as usize..self.indptr[i + 1] as usize;
        (&self.indices[range.clone()], &self.values[range])
    }

    /// The dense row-major matrix (zeros where nothing is stored).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for i in 0..self.rows {
            let (cols, vals) = self.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                out[i * self.cols + j as usize] = v;
            }
        }
        out
    }

    /// The transpose, in CSR form (the compressed columns of `self`): the weight gradient
    /// `S^T dY` is a sparse-times-dense product with it. A counting sort, `O(nnz + cols)`.
    pub fn transpose(&self) -> Csr {
        let mut indptr = vec![0u32; self.cols + 1];
        for &j in &self.indices {
            indptr[j as usize + 1] += 1;
        }
        for j in 0..self.cols {
            indptr[j + 1] += indptr[j];
        }
        let mut next = indptr.clone();
        let mut indices = vec![0u32; self.nnz()];
        let mut values = vec![0.0f32; self.nnz()];
        // Rows are visited in order, so each column's list comes out sorted by row.
        for i in 0..self.rows {
            let (cols, vals) = self.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                let at = next[j as usize] as usize;
                indices[at] = i as u32;
                values[at] = v;
                next[j as usize] += 1;
            }
        }
        Csr {
            rows: self.cols,
            cols: self.rows,
            indptr,
            indices,
            values,
        }
    }

    /// Positions of the stored entries in the dense row-major matrix (`i * cols + j`), for
    /// gathering them from a dense tensor.
    ///
    /// # Panics
    /// If `rows * cols` does not fit in `u32`.
    #[track_caller]
    pub fn flat_positions(&self) -> Vec<u32> {
        fits("rows * cols", self.rows * self.cols).expect("Csr::flat_positions");
        (0..self.rows)
            .flat_map(|i| {
                let (cols, _) = self.row(i);
                cols.iter().map(move |&j| (i * self.cols) as u32 + j)
            })
            .collect()
    }

    /// The same pattern with other values (one per stored entry).
    ///
    /// # Panics
    /// If `values.len() != nnz`.
    #[track_caller]
    pub fn with_values(&self, values: Vec<f32>) -> Csr {
        assert_eq!(
            values.len(),
            self.nnz(),
            "Csr::with_values: {} values for {} stored entries",
            values.len(),
            self.nnz()
        );
        Csr {
            values,
            ..self.clone()
        }
    }
}

#[cfg(feature = "sprs")]
impl Csr {
    /// The same matrix as a `sprs::CsMat` in CSR storage (exact: the same entries, explicit
    /// zeros included).
    pub fn to_sprs(&self) -> sprs::CsMat<f32> {
        sprs::CsMat::new(
            (self.rows, self.cols),
            self.indptr.iter().map(|&p| p as usize).collect(),
            self.indices.iter().map(|&j| j as usize).collect(),
            self.values.clone(),
        )
    }

    /// A `sprs::CsMat` (CSR or CSC storage) as a [`Csr`], exactly: explicit zeros stay
    /// stored.
    ///
    /// # Errors
    /// [`SparseError::TooLarge`] when a size does not fit in `u32` (sprs guarantees the rest
    /// of the format).
    pub fn from_sprs(m: &sprs::CsMat<f32>) -> Result<Csr, SparseError> {
        let csr;
        let m = if m.is_csr() {
            m
        } else {
            csr = m.to_csr();
            &csr
        };
        let (rows, cols) = m.shape();
        fits("stored entries", m.nnz())?;
        fits("cols", cols)?;
        let indptr: Vec<u32> = m.indptr().to_proper().iter().map(|&p| p as u32).collect();
        let indices: Vec<u32> = m.indices().iter().map(|&j| j as u32).collect();
        Csr::new(rows, cols, indptr, indices, m.data().to_vec())
    }
}
