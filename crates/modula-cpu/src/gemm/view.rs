//! [`MatRef`] and [`MatMut`]: strided views of `f32` matrices, whose rows (or, transposed,
//! columns) may be read through an index.

/// A read-only strided view of an f32 matrix: element `(i, j)` is
/// `data[r(i) * row_stride + c(j) * col_stride]`, where `r` and `c` are the identity unless the
/// view reads its rows (or, transposed, its columns) through an index
/// ([`MatRef::gathered_rows`]).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
    /// Row `i` of the view is stored row `row_map[i]`.
    pub(super) row_map: Option<&'a [u32]>,
    /// Column `j` of the view is stored column `col_map[j]`.
    pub(super) col_map: Option<&'a [u32]>,
}

impl<'a> MatRef<'a> {
    /// A strided view.
    ///
    /// # Panics
    /// If an element of the view falls outside `data`.
    #[track_caller]
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        assert!(
            extent(rows, cols, row_stride, col_stride) <= data.len(),
            "MatRef: a {rows}x{cols} view with strides ({row_stride}, {col_stride}) does not fit \
             in {} elements",
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
            row_map: None,
            col_map: None,
        }
    }

    /// Row `i` of this view is row `rows[i]` of the row-major matrix `data` (`cols` columns):
    /// a gather that the product performs while it packs, instead of a copy of its own. Rows
    /// may repeat and come in any order.
    ///
    /// ```
    /// use modula_cpu::gemm::{gemm, MatMut, MatRef, Parallelism};
    /// let x = [1.0, 2.0, 3.0, 4.0]; // 2 x 2
    /// let w = [1.0, 0.0, 0.0, 1.0];
    /// let mut y = [0.0; 6];
    /// gemm(1.0, MatRef::gathered_rows(&x, &[1, 0, 1], 2), MatRef::row_major(&w, 2, 2), 0.0,
    ///      MatMut::row_major(&mut y, 3, 2), Parallelism::Sequential);
    /// assert_eq!(y, [3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    /// ```
    ///
    /// # Panics
    /// If an index names a row past the end of `data` (with `cols > 0`).
    #[track_caller]
    pub fn gathered_rows(data: &'a [f32], rows: &'a [u32], cols: usize) -> Self {
        // With no columns nothing is read, so any index will do.
        if let Some(stored) = data.len().checked_div(cols)
            && let Some(&bad) = rows.iter().find(|&&r| r as usize >= stored)
        {
            panic!("MatRef: row index {bad} is past the {stored} rows of the data");
        }
        MatRef {
            data,
            rows: rows.len(),
            cols,
            row_stride: cols,
            col_stride: 1,
            row_map: Some(rows),
            col_map: None,
        }
    }

    /// A contiguous row-major view.
    ///
    /// # Panics
    /// If `data` holds fewer than `rows * cols` elements.
    #[track_caller]
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            row_map: self.col_map,
            col_map: self.row_map,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element `(i, j)`, for packing loops (bounds were checked at construction, and the
    /// slice index re-checks them).
    #[inline(always)]
    pub(super) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.row_offset(i) + self.col_offset(j)]
    }

    /// Where row `i` of the view starts in `data`.
    #[inline(always)]
    pub(super) fn row_offset(&self, i: usize) -> usize {
        self.row_map.map_or(i, |m| m[i] as usize) * self.row_stride
    }

    /// How far column `j` of the view lies from the start of a row.
    #[inline(always)]
    pub(super) fn col_offset(&self, j: usize) -> usize {
        self.col_map.map_or(j, |m| m[j] as usize) * self.col_stride
    }

    /// Columns `j0..j1` of this view.
    pub(super) fn cols_range(self, j0: usize, j1: usize) -> Self {
        assert!(
            j0 <= j1 && j1 <= self.cols,
            "MatRef: columns {j0}..{j1} of {}",
            self.cols
        );
        match self.col_map {
            Some(map) => MatRef {
                col_map: Some(&map[j0..j1]),
                cols: j1 - j0,
                ..self
            },
            // Column j0 starts the view; an empty range keeps the data (nothing is read).
            None if j0 < j1 => MatRef {
                data: &self.data[j0 * self.col_stride..],
                cols: j1 - j0,
                ..self
            },
            None => MatRef { cols: 0, ..self },
        }
    }

    /// Whether the view reads its rows or columns through an index.
    pub(super) fn gathered(&self) -> bool {
        self.row_map.is_some() || self.col_map.is_some()
    }
}

/// A mutable row-major view of an f32 matrix with an arbitrary row stride: element `(i, j)` is
/// `data[i * row_stride + j]`.
///
/// The view may cover memory that is not initialised yet ([`MatMut::uninit`]); a product
/// then writes every element before it reads one.
#[derive(Debug)]
pub struct MatMut<'a> {
    /// Element (0, 0); the view borrows the elements it spans from here for `'a`.
    pub(super) ptr: *mut f32,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    /// Whether every element holds a value (false for [`MatMut::uninit`]).
    pub(super) init: bool,
    pub(super) _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a MatMut is a unique borrow of its elements, like the `&mut [f32]` or
// `&mut [MaybeUninit<f32>]` it was made from, which are Send.
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// A view with row stride `row_stride` (at least `cols` when there are two or more rows,
    /// so that rows never overlap).
    ///
    /// # Panics
    /// If the rows overlap or an element falls outside `data`.
    #[track_caller]
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self::checked(data.as_mut_ptr(), data.len(), rows, cols, row_stride, true)
    }

    /// A row-major view (`row_stride` as for [`MatMut::new`]) of memory that need not be
    /// initialised: a product into it must have `beta == 0` (it writes every element before
    /// reading any), and afterwards the whole view is initialised.
    ///
    /// # Panics
    /// If the rows overlap or an element falls outside `data`.
    #[track_caller]
    pub fn uninit(
        data: &'a mut [std::mem::MaybeUninit<f32>],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        Self::checked(
            data.as_mut_ptr().cast(),
            data.len(),
            rows,
            cols,
            row_stride,
            false,
        )
    }

    /// A view of `len` elements from `ptr`, after checking that it fits in them.
    #[track_caller]
    fn checked(
        ptr: *mut f32,
        len: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
        init: bool,
    ) -> Self {
        assert!(
            rows <= 1 || row_stride >= cols,
            "MatMut: row stride {row_stride} is shorter than a row of {cols} columns"
        );
        assert!(
            extent(rows, cols, row_stride, 1) <= len,
            "MatMut: a {rows}x{cols} view with row stride {row_stride} does not fit in {len} \
             elements"
        );
        MatMut {
            ptr,
            rows,
            cols,
            row_stride,
            init,
            _borrow: std::marker::PhantomData,
        }
    }

    /// A contiguous row-major view.
    ///
    /// # Panics
    /// If `data` holds fewer than `rows * cols` elements.
    #[track_caller]
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// This view split into its first `at` columns and the rest (like `split_at_mut`).
    pub(super) fn split_cols(self, at: usize) -> (MatMut<'a>, MatMut<'a>) {
        assert!(
            at <= self.cols,
            "MatMut: split at column {at} of {}",
            self.cols
        );
        let right = MatMut {
            // Column `at` of row 0; `wrapping_add` keeps an empty right part's pointer defined.
            ptr: self.ptr.wrapping_add(at),
            cols: self.cols - at,
            ..self
        };
        let left = MatMut { cols: at, ..self };
        (left, right)
    }
}

/// Number of elements a strided view spans (0 when it is empty).
pub(super) fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}
