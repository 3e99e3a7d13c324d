//! Packed single-precision GEMM: `C = alpha * op(A) * op(B) + beta * C`.
//!
//! The structure is the classic BLIS one. `op(B)` is packed into `KC x NR` column strips and
//! `op(A)` into `MR x KC` row strips, so that the microkernel reads both operands
//! contiguously whatever their original strides are (transposes therefore cost only the
//! packing, which is done once per block). The microkernel keeps an `MR x NR` tile of `C` in
//! registers and performs rank-1 updates along `k`.
//!
//! - On x86-64 with AVX-512F (detected at run time), the microkernel is a 12 x 32 tile: two zmm
//!   registers per row, 24 accumulators, one broadcast of `A` and two FMAs per row and depth.
//!   (12 rows leave the 32 vector registers enough room for the two `B` vectors and the
//!   broadcast without spilling; 24 independent FMA chains hide the FMA latency.)
//! - Elsewhere a portable kernel with the same tile and packing is used (compiled for AVX2+FMA
//!   when the CPU has it), so every machine shares the packing, blocking and threading code.
//!
//! When `op(B)` has unit column stride and `op(A)` has few rows, packing `B` would cost as much
//! as the product itself (every element of `B` is used only `m` times), so [`gemm`] then lets
//! the microkernel read `B` in place, prefetching it in software since rows of `B` are far
//! apart. When the same `B` multiplies many small `A` blocks (one
//! module's weights applied to its row block, for example), pack it once with [`PackedRhs`] and
//! call [`gemm_packed`].
//!
//! Parallelism is explicit ([`Parallelism`]): work is split into rectangular parts of `C`
//! that run as rayon tasks in the *current* rayon pool, so a caller that runs inside
//! `Cpu::install` uses exactly that backend's threads.
//!
//! ```
//! use modula_tensor::gemm::{gemm, MatMut, MatRef, Parallelism};
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 x 3, row-major
//! let mut c = [f32::NAN; 4];
//! // C = A * A^T (the transpose is only a change of strides).
//! gemm(
//!     1.0,
//!     MatRef::row_major(&a, 2, 3),
//!     MatRef::row_major(&a, 2, 3).t(),
//!     0.0,
//!     MatMut::row_major(&mut c, 2, 2),
//!     Parallelism::Sequential,
//! );
//! assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
//! ```

use rayon::prelude::*;

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile (two 16-lane vectors).
const NR: usize = 32;
/// Depth of one packed block. One `A` strip (`MR x KC`, 12 KiB) plus the `B` strip streaming
/// past it (`KC x NR`, 32 KiB) fit in a 48 KiB L1 cache, so the `A` strip stays there while the
/// microkernel sweeps the `B` strips. (Depths of 256, 384 and 512 measured within noise of
/// each other on the target Xeon; the smaller one also suits 32 KiB L1 caches best.)
const KC: usize = 256;
/// Rows of one packed `A` block (a multiple of `MR`): `MC x KC` floats (240 KiB) stay in L2.
const MC: usize = 240;
/// Columns handled per pass over one packed `A` block: the `KC x NC` slab of packed `B` that
/// every `A` strip of the block sweeps (512 KiB) stays in L2.
const NC: usize = 512;
/// Products with fewer multiply-adds than this (about 30 us of work on one core) run on the
/// calling thread: handing work to a pool thread and back costs about 10 us, so smaller
/// products gain little or lose from the split (1 x 512 x 512 measured slower on two threads).
const PAR_MIN_MACS: usize = 1 << 21;
/// Packing of `B` runs in parallel from this many elements (1 MiB) on: below it the copy is
/// shorter than the hand-off.
const PAR_MIN_PACK: usize = 1 << 18;

/// Most rows of A for which `A B^T` with row-contiguous operands is computed as dot products
/// of rows (reading `B` once per [`avx512::DOT_ROWS`] rows of A) rather than by packing
/// `B^T`.
#[cfg(target_arch = "x86_64")]
const DOT_MAX_ROWS: usize = 16;

/// Most rows of A for which `A W^T` with `W`'s rows contiguous is computed by [`gemm_wt`]
/// (reading `W` in place) rather than by packing `W^T`. Measured on the 2-core Xeon, one
/// thread per module, `dY W_m^T` over 16 modules of 64 rows ran 1.33x faster than the packed
/// path (as fast as `X W_m`, which reads `W` in place too), 128 rows 1.16x and 256 rows
/// 1.01-1.03x; at 16 rows the dot products above stay faster (0.77-0.80x for this path).
#[cfg(target_arch = "x86_64")]
const WT_MAX_ROWS: usize = 128;

/// How a product may be split across threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// Run on the calling thread only.
    Sequential,
    /// Split into at most this many rayon tasks, executed in the current rayon pool (call from
    /// inside `Cpu::install` to use that backend's threads).
    Rayon(usize),
}

impl Parallelism {
    fn tasks(self) -> usize {
        match self {
            Parallelism::Sequential => 1,
            Parallelism::Rayon(n) => n.max(1),
        }
    }
}

/// A read-only strided view of an f32 matrix: element `(i, j)` is
/// `data[r(i) * row_stride + c(j) * col_stride]`, where `r` and `c` are the identity unless the
/// view reads its rows (or, transposed, its columns) through an index
/// ([`MatRef::gathered_rows`]).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    /// Row `i` of the view is stored row `row_map[i]`.
    row_map: Option<&'a [u32]>,
    /// Column `j` of the view is stored column `col_map[j]`.
    col_map: Option<&'a [u32]>,
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
    /// use modula_tensor::gemm::{gemm, MatMut, MatRef, Parallelism};
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
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.row_offset(i) + self.col_offset(j)]
    }

    /// Where row `i` of the view starts in `data`.
    #[inline(always)]
    fn row_offset(&self, i: usize) -> usize {
        self.row_map.map_or(i, |m| m[i] as usize) * self.row_stride
    }

    /// How far column `j` of the view lies from the start of a row.
    #[inline(always)]
    fn col_offset(&self, j: usize) -> usize {
        self.col_map.map_or(j, |m| m[j] as usize) * self.col_stride
    }

    /// Whether the view reads its rows or columns through an index.
    fn gathered(&self) -> bool {
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
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    row_stride: usize,
    /// Whether every element holds a value (false for [`MatMut::uninit`]).
    init: bool,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
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
}

/// Number of elements a strided view spans (0 when it is empty).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `op(B)` packed once for reuse across many products `C = alpha * A * B + beta * C`.
///
/// Layout: for each depth block of `KC` rows, `ceil(n / NR)` strips of `kc x NR` floats,
/// row-major inside a strip, zero-padded past column `n`. Packing costs one pass over `B`;
/// afterwards each [`gemm_packed`] call only packs its (small) `A`.
///
/// ```
/// use modula_tensor::gemm::{gemm_packed, MatMut, MatRef, PackedRhs, Parallelism};
/// let w = [1.0, 0.0, 0.0, 2.0]; // 2 x 2
/// let packed = PackedRhs::new(MatRef::row_major(&w, 2, 2), Parallelism::Sequential);
/// let x = [3.0, 4.0];
/// let mut y = [0.0; 2];
/// gemm_packed(1.0, MatRef::row_major(&x, 1, 2), &packed, 0.0,
///             MatMut::row_major(&mut y, 1, 2), Parallelism::Sequential);
/// assert_eq!(y, [3.0, 8.0]);
/// ```
#[derive(Clone, Debug)]
pub struct PackedRhs {
    k: usize,
    n: usize,
    buf: AlignedBuf,
}

impl PackedRhs {
    /// Packs `b` (`k x n`, any strides).
    pub fn new(b: MatRef<'_>, par: Parallelism) -> Self {
        Self::pack_into(b, par, AlignedBuf::default())
    }

    /// Packs `b` into `buf`, reusing its allocation when it is large enough.
    fn pack_into(b: MatRef<'_>, par: Parallelism, buf: AlignedBuf) -> Self {
        let (k, n) = (b.rows, b.cols);
        let strips = n.div_ceil(NR);
        let mut buf = buf.with_len(k * strips * NR);
        // Each (depth block, strip) pair owns a disjoint `kc x NR` piece of the buffer, so the
        // pieces can be filled in parallel.
        let mut pieces: Vec<(usize, usize, &mut [f32])> =
            Vec::with_capacity(strips * k.div_ceil(KC));
        let mut rest = buf.as_mut_slice();
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for s in 0..strips {
                let (piece, tail) = rest.split_at_mut(kc * NR);
                pieces.push((p0, s * NR, piece));
                rest = tail;
            }
        }
        let pack = |(p0, j0, piece): (usize, usize, &mut [f32])| {
            let kc = piece.len() / NR;
            pack_b_strip(&b, p0, kc, j0, piece);
        };
        if par.tasks() > 1 && k * n >= PAR_MIN_PACK {
            pieces.into_par_iter().for_each(pack);
        } else {
            pieces.into_iter().for_each(pack);
        }
        PackedRhs { k, n, buf }
    }

    /// Rows of `op(B)` (the inner dimension of the product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `op(B)`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The packed `kc x NR` strip starting at depth `p0` and column `j0`.
    fn strip(&self, p0: usize, j0: usize) -> &[f32] {
        let strips = self.n.div_ceil(NR);
        let kc = KC.min(self.k - p0);
        let start = p0 * strips * NR + (j0 / NR) * kc * NR;
        &self.buf.as_slice()[start..start + kc * NR]
    }
}

/// Packs columns `j0..j0 + NR` of rows `p0..p0 + kc` of `b` into `out` (`kc x NR`, row-major,
/// zero past the last column).
fn pack_b_strip(b: &MatRef<'_>, p0: usize, kc: usize, j0: usize, out: &mut [f32]) {
    let w = NR.min(b.cols - j0);
    if w < NR {
        // The last strip is zero-padded; buffers are reused, so clear it explicitly.
        out.fill(0.0);
    }
    if b.col_stride == 1 && b.col_map.is_none() {
        // Rows of the strip are contiguous in B: plain copies (from gathered rows, if B reads
        // its rows through an index).
        for (p, row) in out.chunks_exact_mut(NR).enumerate() {
            let start = b.row_offset(p0 + p) + j0;
            row[..w].copy_from_slice(&b.data[start..start + w]);
        }
    } else if b.row_stride == 1 && b.row_map.is_none() {
        // A transposed B: each column of the strip is contiguous, so the strip is a transpose
        // of up to two 16-column halves, done 16 depths at a time.
        let mut starts = [0usize; 16];
        for half in 0..w.div_ceil(16) {
            let nv = 16.min(w - 16 * half);
            for (v, start) in starts[..nv].iter_mut().enumerate() {
                *start = b.col_offset(j0 + 16 * half + v) + p0;
            }
            for q0 in (0..kc).step_by(16) {
                let len = 16.min(kc - q0);
                transpose_block(
                    &b.data[q0..],
                    &starts[..nv],
                    len,
                    &mut out[q0 * NR + 16 * half..],
                    NR,
                    16,
                );
            }
        }
    } else {
        for p in 0..kc {
            for j in 0..w {
                out[p * NR + j] = b.at(p0 + p, j0 + j);
            }
        }
    }
}

/// Packs rows `i0..i0 + mr` and depths `p0..p0 + kc` of `a` into `out` (`kc x MR`, the `MR`
/// values of one depth contiguous, zero past row `mr`).
fn pack_a_strip(a: &MatRef<'_>, i0: usize, mr: usize, p0: usize, kc: usize, out: &mut [f32]) {
    let out = &mut out[..kc * MR];
    if a.row_stride == 1 && a.row_map.is_none() {
        // A transposed A: the rows of one depth are contiguous (the depths may be gathered
        // rows of the stored matrix).
        for (p, dst) in out.chunks_exact_mut(MR).enumerate() {
            let start = a.col_offset(p0 + p) + i0;
            dst[..mr].copy_from_slice(&a.data[start..start + mr]);
            dst[mr..].fill(0.0);
        }
    } else if a.col_stride == 1 && a.col_map.is_none() {
        // A row-major A: the strip is a transpose, done 16 depths at a time (zero rows past
        // `mr` come out of the transpose for free). The rows may be gathered.
        let mut starts = [0usize; MR];
        for (i, start) in starts[..mr].iter_mut().enumerate() {
            *start = a.row_offset(i0 + i) + p0;
        }
        for q0 in (0..kc).step_by(16) {
            let len = 16.min(kc - q0);
            transpose_block(
                &a.data[q0..],
                &starts[..mr],
                len,
                &mut out[q0 * MR..],
                MR,
                MR,
            );
        }
    } else {
        for (p, dst) in out.chunks_exact_mut(MR).enumerate() {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if i < mr { a.at(i0 + i, p0 + p) } else { 0.0 };
            }
        }
    }
}

/// Transposes a block of at most 16 x 16: source vector `v < starts.len()` holds `len`
/// contiguous values at `src[starts[v]..]` (evenly spaced for a strided matrix, anywhere for
/// gathered rows); destination vector `q < len` receives element `q` of every source vector in
/// its lanes `0..starts.len()` and zeros in the lanes up to `lanes`, at
/// `dst[q * dst_stride..]`.
///
/// # Panics
/// If `starts.len()`, `len` or `lanes` exceed 16, `starts.len() > lanes`, or a vector falls
/// outside its slice.
fn transpose_block(
    src: &[f32],
    starts: &[usize],
    len: usize,
    dst: &mut [f32],
    dst_stride: usize,
    lanes: usize,
) {
    assert!(starts.len() <= lanes && lanes <= 16 && len <= 16);
    if len == 0 {
        return;
    }
    assert!(starts.iter().all(|&s| s + len <= src.len()));
    assert!((len - 1) * dst_stride + lanes <= dst.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, and the assertions above keep every read within
        // `src` and every write within `dst`.
        unsafe {
            avx512::transpose_block(
                src.as_ptr(),
                starts,
                len,
                dst.as_mut_ptr(),
                dst_stride,
                lanes,
            )
        };
        return;
    }
    transpose_block_scalar(src, starts, len, dst, dst_stride, lanes);
}

/// The portable form of [`transpose_block`].
fn transpose_block_scalar(
    src: &[f32],
    starts: &[usize],
    len: usize,
    dst: &mut [f32],
    dst_stride: usize,
    lanes: usize,
) {
    for q in 0..len {
        for v in 0..lanes {
            dst[q * dst_stride + v] = starts.get(v).map_or(0.0, |&s| src[s + q]);
        }
    }
}

/// An f32 buffer whose first element is 64-byte aligned, so that packed strips start on
/// cache-line boundaries.
#[derive(Debug, Default)]
struct AlignedBuf {
    vec: Vec<f32>,
    offset: usize,
    len: usize,
}

impl Clone for AlignedBuf {
    /// A copy with its own alignment offset (a derived clone would keep the original offset,
    /// which need not align the new allocation).
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl AlignedBuf {
    /// This buffer resized to `len` elements: the allocation is kept (with stale contents)
    /// when it is large enough, otherwise replaced by a zeroed one.
    fn with_len(self, len: usize) -> Self {
        if !self.vec.is_empty() && self.offset + len <= self.vec.len() {
            AlignedBuf { len, ..self }
        } else {
            Self::zeroed(len)
        }
    }

    fn zeroed(len: usize) -> Self {
        let vec = vec![0.0f32; len + 16];
        let offset = vec.as_ptr().align_offset(64).min(16);
        AlignedBuf { vec, offset, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.vec[self.offset..self.offset + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.vec[self.offset..self.offset + self.len]
    }
}

/// Where the microkernel reads `op(B)` from.
#[derive(Clone, Copy)]
enum Rhs<'r, 'a> {
    /// Packed strips.
    Packed(&'r PackedRhs),
    /// In place: `op(B)` has unit column stride, rows `row_stride` apart.
    Direct(MatRef<'a>),
}

/// `C = alpha * op(A) * op(B) + beta * C`, with `op(A)` given by `a` (`m x k`), `op(B)` by `b`
/// (`k x n`) and `C` by `c` (`m x n`).
///
/// With `beta == 0` the previous contents of `C` are ignored (NaN included); with `k == 0`,
/// `C = beta * C`.
///
/// # Panics
/// If the shapes do not chain, or `C` is [uninitialised](MatMut::uninit) and `beta != 0`.
#[track_caller]
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>, par: Parallelism) {
    gemm_impl(alpha, a, b, beta, None, c, par);
}

/// `C = alpha * op(A) * op(B) + 1 bias^T`: a product whose every row of `C` starts as `bias`
/// (`n` values), as a layer's output does. The previous contents of `C` are ignored, so `C`
/// may be [uninitialised](MatMut::uninit); the bias is added as each tile is stored, which
/// saves a pass over `C`.
///
/// ```
/// use modula_tensor::gemm::{gemm_bias, MatMut, MatRef, Parallelism};
/// let x = [1.0, 2.0]; // 1 x 2
/// let w = [1.0, 0.0, 0.0, 1.0];
/// let mut y = [f32::NAN; 2];
/// gemm_bias(1.0, MatRef::row_major(&x, 1, 2), MatRef::row_major(&w, 2, 2), &[10.0, 20.0],
///           MatMut::row_major(&mut y, 1, 2), Parallelism::Sequential);
/// assert_eq!(y, [11.0, 22.0]);
/// ```
///
/// # Panics
/// If the shapes do not chain or `bias` does not hold `n` values.
#[track_caller]
pub fn gemm_bias(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    bias: &[f32],
    c: MatMut<'_>,
    par: Parallelism,
) {
    assert_eq!(
        bias.len(),
        b.cols,
        "gemm_bias: {} bias values for {} columns",
        bias.len(),
        b.cols
    );
    gemm_impl(alpha, a, b, 0.0, Some(bias), c, par);
}

/// [`gemm`] and [`gemm_bias`].
#[track_caller]
fn gemm_impl(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    bias: Option<&[f32]>,
    c: MatMut<'_>,
    par: Parallelism,
) {
    check_shapes(&a, b.rows, b.cols, &c);
    assert!(
        c.init || beta == 0.0,
        "gemm: an uninitialised C needs beta == 0 (got {beta})"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale_c(c, beta, bias);
        return;
    }
    let tasks = task_count(m, k, n, par);
    // `A W^T` with `W`'s rows contiguous (the backward `dY W^T` of a layer with row-major
    // weights) and only a few rows of A: packing `W^T` would transpose all of `W`, a pass over
    // the weights that overlaps no arithmetic, for a few output rows. Below `WT_MAX_ROWS` rows
    // the product reads `W` in place instead: by dot products of contiguous rows for the
    // fewest rows, otherwise by `gemm_wt`.
    // (Those paths store no bias: a layer's biases belong to its forward `X W`.)
    #[cfg(target_arch = "x86_64")]
    let w_in_place = tasks == 1
        && bias.is_none()
        && b.row_stride == 1
        && !b.gathered()
        && m <= WT_MAX_ROWS
        && matches!(Kernel::detect(), Kernel::Avx512);
    #[cfg(target_arch = "x86_64")]
    if w_in_place && (m > DOT_MAX_ROWS || a.col_stride != 1 || a.col_map.is_some()) {
        gemm_wt(alpha, &a, &b, beta, c);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if w_in_place {
        // A's rows may be gathered: the kernel takes where each one starts.
        let mut a_rows = [std::ptr::null(); DOT_MAX_ROWS];
        for (i, row) in a_rows[..m].iter_mut().enumerate() {
            *row = a.data[a.row_offset(i)..].as_ptr();
        }
        // SAFETY: the views were bounds-checked at construction (every element (i, p) of A
        // and (p, j) of op(B) lies inside its slice), C is m x n with its row stride, and
        // AVX-512F is present.
        unsafe {
            avx512::dot_rows(
                alpha,
                &a_rows[..m],
                k,
                b.data.as_ptr(),
                b.col_stride,
                n,
                beta,
                c.ptr,
                c.row_stride,
            )
        };
        return;
    }
    // Reading B in place (with software prefetch) saves a full packing pass over it, which
    // costs as much as the product itself for a few rows of A; measured, the in-place kernel
    // runs within a few percent of the packed one, so packing only pays for tall products,
    // where each thread sweeps B many times.
    let rows_per_task = if m.div_ceil(MR) >= tasks {
        m.div_ceil(tasks)
    } else {
        m
    };
    if b.col_stride == 1 && !b.gathered() && rows_per_task <= 2 * MC {
        run(alpha, a, Rhs::Direct(b), beta, bias, c, tasks);
    } else {
        // The packed copy of B is scratch: keep its allocation for this thread's next call, as
        // allocating and faulting in a fresh megabyte costs a noticeable share of a product of
        // this size.
        let buf = B_BUFFER.take();
        let par = if tasks > 1 {
            par
        } else {
            Parallelism::Sequential
        };
        let packed = PackedRhs::pack_into(b, par, buf);
        run(alpha, a, Rhs::Packed(&packed), beta, bias, c, tasks);
        if packed.buf.vec.len() <= MAX_CACHED_FLOATS {
            B_BUFFER.set(packed.buf);
        }
    }
}

/// Depth per pass of [`gemm_wt`]: twelve rows of `W` at this depth (24 KiB) stay in L1 while
/// every strip of `A^T` streams past them.
#[cfg(target_arch = "x86_64")]
const WT_DEPTH: usize = 512;

/// `C = alpha * A * W^T + beta * C` for a few rows of `A` (`m x k`), where `op(B) = W^T`
/// (`k x n`) and `W`'s rows are contiguous. It computes `C^T = W A^T` with the microkernel's
/// operands swapped: `W` is the broadcast operand, read in place twelve rows at a time from
/// front to back (so its loads overlap the arithmetic, as `X W` reads its weights), against
/// `A^T` packed in 32-row strips (small: `A` has few rows), and each tile of `C^T` is stored
/// transposed.
///
/// Only for AVX-512, one task, and `b` not gathered (the caller checks).
#[cfg(target_arch = "x86_64")]
fn gemm_wt(alpha: f32, a: &MatRef<'_>, b: &MatRef<'_>, beta: f32, c: MatMut<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (ldw, ldc) = (b.col_stride, c.row_stride);
    let c_ptr = c.ptr;
    // `A^T` is the packed operand, its strips laid out as B strips are.
    let at = a.t();
    let strips = m.div_ceil(NR);
    let mut buf = B_BUFFER.take().with_len(strips * WT_DEPTH.min(k) * NR);
    for p0 in (0..k).step_by(WT_DEPTH) {
        let kc = WT_DEPTH.min(k - p0);
        let packed = buf.as_mut_slice();
        for (s, strip) in packed.chunks_exact_mut(kc * NR).take(strips).enumerate() {
            pack_b_strip(&at, p0, kc, s * NR, strip);
        }
        // The first depth block applies the caller's beta; later ones accumulate.
        let beta = if p0 == 0 { beta } else { 1.0 };
        for i0 in (0..n).step_by(MR) {
            for s in 0..strips {
                let tile = avx512::WtTile {
                    kc,
                    w: b.data[i0 * ldw + p0..].as_ptr(),
                    ldw,
                    b: packed[s * kc * NR..].as_ptr(),
                    // Rows s * NR.. of C (the strip's rows of A), columns i0.. (W's rows).
                    c: c_ptr.wrapping_add(s * NR * ldc + i0),
                    ldc,
                    rows: MR.min(n - i0),
                    pairs: NR.min(m - s * NR),
                    alpha,
                    beta,
                };
                // SAFETY: W's rows i0..i0 + rows hold kc readable values from depth p0 (the
                // view was bounds-checked at construction: element (p, j) of W^T is
                // `data[j * ldw + p]`), the strip holds kc x NR packed values, the C block
                // (pairs x rows, rows ldc apart) lies inside C, and AVX-512F is present.
                unsafe { avx512::wt_tile(&tile) };
            }
        }
    }
    if buf.vec.len() <= MAX_CACHED_FLOATS {
        B_BUFFER.set(buf);
    }
}

/// `C = alpha * op(A) * B + beta * C` with a pre-packed `B` (see [`PackedRhs`]).
///
/// Same contract as [`gemm`].
///
/// # Panics
/// If the shapes do not chain.
#[track_caller]
pub fn gemm_packed(
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedRhs,
    beta: f32,
    c: MatMut<'_>,
    par: Parallelism,
) {
    check_shapes(&a, b.k, b.n, &c);
    let (m, k, n) = (a.rows, a.cols, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.init || beta == 0.0,
        "gemm_packed: an uninitialised C needs beta == 0 (got {beta})"
    );
    if k == 0 {
        scale_c(c, beta, None);
        return;
    }
    run(
        alpha,
        a,
        Rhs::Packed(b),
        beta,
        None,
        c,
        task_count(m, k, n, par),
    );
}

#[track_caller]
fn check_shapes(a: &MatRef<'_>, k: usize, n: usize, c: &MatMut<'_>) {
    assert!(
        a.cols == k && c.rows == a.rows && c.cols == n,
        "gemm: shapes do not chain: A is {}x{}, B is {k}x{n}, C is {}x{}",
        a.rows,
        a.cols,
        c.rows,
        c.cols
    );
}

/// Whether an `m x k x n` product is large enough to be worth splitting across threads.
pub(crate) fn worth_parallel(m: usize, k: usize, n: usize) -> bool {
    m.saturating_mul(k).saturating_mul(n) >= PAR_MIN_MACS
}

fn task_count(m: usize, k: usize, n: usize, par: Parallelism) -> usize {
    if !worth_parallel(m, k, n) {
        1
    } else {
        par.tasks()
    }
}

/// `C = beta * C + 1 bias^T`, writing zeros or the bias (not `0 * C`) when `beta == 0`.
fn scale_c(c: MatMut<'_>, beta: f32, bias: Option<&[f32]>) {
    let (rows, cols, rs) = (c.rows, c.cols, c.row_stride);
    for i in 0..rows {
        // SAFETY: row i's `cols` elements lie inside the view (checked at construction); a
        // raw write initialises an element, and C is read only when beta != 0, which an
        // uninitialised view does not allow.
        unsafe {
            let row = c.ptr.add(i * rs);
            for j in 0..cols {
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta * row.add(j).read()
                };
                row.add(j).write(old + bias.map_or(0.0, |b| b[j]));
            }
        }
    }
}

/// One task's rectangle of `C`: rows `i0..i1`, columns `j0..j1`.
struct Part<'c> {
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    c: CPtr<'c>,
}

/// A raw pointer to `C` that tasks share; each task writes only its own rectangle.
#[derive(Clone, Copy)]
struct CPtr<'c> {
    ptr: *mut f32,
    row_stride: usize,
    _life: std::marker::PhantomData<&'c mut [f32]>,
}

// SAFETY: tasks built by `run` write disjoint rectangles of C through this pointer, and `run`
// holds the unique borrow of C until every task has finished.
unsafe impl Send for CPtr<'_> {}
// SAFETY: as above; no two tasks touch the same element.
unsafe impl Sync for CPtr<'_> {}

/// Splits `C` into at most `tasks` rectangles (along rows when there are enough row tiles,
/// otherwise along columns) and computes each one, in parallel when `tasks > 1`.
fn run(
    alpha: f32,
    a: MatRef<'_>,
    b: Rhs<'_, '_>,
    beta: f32,
    bias: Option<&[f32]>,
    c: MatMut<'_>,
    tasks: usize,
) {
    let (m, n) = (c.rows, c.cols);
    let (row_tiles, col_tiles) = (m.div_ceil(MR), n.div_ceil(NR));
    // Pick the grid (tm x tn, tm * tn <= tasks) that minimises the work of the busiest task:
    // its rows times its columns, plus the packing of its A rows, which every task of a grid
    // row repeats (packing one element costs about as much as multiplying it by
    // `PACK_COST_COLS` columns). Ties go to splitting rows.
    const PACK_COST_COLS: usize = 32;
    let busiest = |tiles: usize, parts: usize, unit: usize, total: usize| {
        (0..parts)
            .map(|r| span(tiles, parts, r, unit, total))
            .map(|(lo, hi)| hi - lo)
            .max()
            .unwrap_or(0)
    };
    let mut grid = (1, 1);
    let mut best = usize::MAX;
    for tm in (1..=tasks).rev() {
        let tn = tasks / tm;
        let (rows, cols) = (busiest(row_tiles, tm, MR, m), busiest(col_tiles, tn, NR, n));
        let cost = rows * (cols + PACK_COST_COLS);
        if cost < best {
            best = cost;
            grid = (tm, tn);
        }
    }
    let (tm, tn) = grid;
    let cptr = CPtr {
        ptr: c.ptr,
        row_stride: c.row_stride,
        _life: std::marker::PhantomData,
    };
    let mut parts = Vec::with_capacity(tm * tn);
    for r in 0..tm {
        let (i0, i1) = span(row_tiles, tm, r, MR, m);
        for s in 0..tn {
            let (j0, j1) = span(col_tiles, tn, s, NR, n);
            if i0 < i1 && j0 < j1 {
                parts.push(Part {
                    i0,
                    i1,
                    j0,
                    j1,
                    c: cptr,
                });
            }
        }
    }
    let kern = Kernel::detect();
    let store = Store { alpha, beta, bias };
    if parts.len() == 1 {
        compute_part(kern, &a, b, &store, &parts[0]);
    } else {
        parts
            .par_iter()
            .for_each(|part| compute_part(kern, &a, b, &store, part));
    }
}

/// Range of part `r` of `parts` when `tiles` tiles of `unit` elements (`total` in all) are
/// shared out: boundaries fall on tile edges, so only the last part can end in a partial tile.
fn span(tiles: usize, parts: usize, r: usize, unit: usize, total: usize) -> (usize, usize) {
    (
        (tiles * r / parts) * unit,
        ((tiles * (r + 1) / parts) * unit).min(total),
    )
}

/// Computes one rectangle of `C` with the BLIS loop nest (columns in `NC` chunks, depth in
/// `KC` blocks, rows in `MC` blocks, then `NR` strips and `MR` tiles).
fn compute_part(kern: Kernel, a: &MatRef<'_>, b: Rhs<'_, '_>, store: &Store<'_>, part: &Part<'_>) {
    let k = a.cols;
    let rows = (part.i1 - part.i0).min(MC).div_ceil(MR) * MR;
    with_a_buffer(rows * KC.min(k), |apack| {
        compute_part_in(kern, a, b, store, part, apack)
    });
}

/// How a product is stored into `C`: `C = alpha * A B + beta * C + 1 bias^T`.
struct Store<'b> {
    alpha: f32,
    beta: f32,
    /// One value per column of C (only with `beta == 0`).
    bias: Option<&'b [f32]>,
}

/// Scratch buffers larger than this (16 MiB) are freed after use rather than cached.
const MAX_CACHED_FLOATS: usize = 1 << 22;

thread_local! {
    /// Per-thread scratch for the packed B of [`gemm`] (taken while in use, so a nested call
    /// on the same thread simply allocates its own).
    static B_BUFFER: std::cell::Cell<AlignedBuf> = const {
        std::cell::Cell::new(AlignedBuf { vec: Vec::new(), offset: 0, len: 0 })
    };

    /// Per-thread scratch for packed A blocks, kept between calls: allocating (and faulting in)
    /// a fresh block would cost more than the whole product for the small row blocks of
    /// modular layers.
    static A_BUFFER: std::cell::RefCell<AlignedBuf> = const {
        std::cell::RefCell::new(AlignedBuf { vec: Vec::new(), offset: 0, len: 0 })
    };
}

/// Runs `f` with at least `len` floats of this thread's A scratch.
fn with_a_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    A_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len < len {
                *buf = AlignedBuf::zeroed(len);
            }
            f(&mut buf.as_mut_slice()[..len])
        }
        // Re-entered on this thread (a rayon task waiting inside another GEMM ran this one):
        // use a private buffer.
        Err(_) => f(&mut AlignedBuf::zeroed(len).as_mut_slice()[..len]),
    })
}

/// [`compute_part`] with its A scratch (`ceil(min(rows, MC) / MR) * MR * min(k, KC)` floats).
fn compute_part_in(
    kern: Kernel,
    a: &MatRef<'_>,
    b: Rhs<'_, '_>,
    store: &Store<'_>,
    part: &Part<'_>,
    apack: &mut [f32],
) {
    let k = a.cols;
    // Strips are `kcs * MR` floats apart, `kcs` being the depth of a full block.
    let kcs = KC.min(k);
    for jc in (part.j0..part.j1).step_by(NC) {
        let jc_end = (jc + NC).min(part.j1);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            // The first depth block applies the caller's beta and the bias; later ones
            // accumulate.
            let (beta, bias) = if p0 == 0 {
                (store.beta, store.bias)
            } else {
                (1.0, None)
            };
            for ic in (part.i0..part.i1).step_by(MC) {
                let mc = MC.min(part.i1 - ic);
                for (t, i0) in (ic..ic + mc).step_by(MR).enumerate() {
                    let mr = MR.min(ic + mc - i0);
                    pack_a_strip(a, i0, mr, p0, kc, &mut apack[t * MR * kcs..]);
                }
                // The A strip (MR x kc) stays in L1 while the B strips of this column chunk
                // stream from L2 (the BLIS order with the roles of A and B swapped, because the
                // vectors run along the columns of row-major C).
                for (t, i0) in (ic..ic + mc).step_by(MR).enumerate() {
                    let mr = MR.min(ic + mc - i0);
                    let astrip = apack[t * MR * kcs..].as_ptr();
                    for j0 in (jc..jc_end).step_by(NR) {
                        let nr = NR.min(jc_end - j0);
                        let (bptr, ldb) = match b {
                            Rhs::Packed(pb) => (pb.strip(p0, j0).as_ptr(), NR),
                            Rhs::Direct(bm) => {
                                (bm.data[p0 * bm.row_stride + j0..].as_ptr(), bm.row_stride)
                            }
                        };
                        let tile = Tile {
                            kc,
                            a: astrip,
                            b: bptr,
                            ldb,
                            // SAFETY: (i0, j0) lies inside this task's rectangle of C, which is
                            // inside the buffer that `MatMut` validated.
                            c: unsafe { part.c.ptr.add(i0 * part.c.row_stride + j0) },
                            ldc: part.c.row_stride,
                            mr,
                            nr,
                            alpha: store.alpha,
                            beta,
                            bias: bias.map_or(std::ptr::null(), |v| v[j0..j0 + nr].as_ptr()),
                        };
                        // SAFETY: `tile` addresses kc x MR packed A values, kc rows of nr
                        // readable B values `ldb` apart (checked by the slice indexing above and
                        // by the packed layout), and an mr x nr block of C owned by this task.
                        unsafe { kern.run(&tile) };
                    }
                }
            }
        }
    }
}

/// Arguments of one microkernel call: `C[mr x nr] = alpha * A * B + beta * C + 1 bias^T`,
/// where `A` is a packed `kc x MR` strip, `B` holds `kc` rows of at least `nr` readable values,
/// `ldb` apart, and `bias` is null (none) or `nr` values. With `beta == 0`, C is not read.
struct Tile {
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
}

/// The microkernel chosen for this CPU.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// # Safety
    /// The pointers of `t` must address the memory described on [`Tile`], and the kernel
    /// variant must be supported by the CPU (as [`Kernel::detect`] guarantees).
    unsafe fn run(self, t: &Tile) {
        match self {
            // SAFETY: detect() only returns Avx512 when the CPU supports AVX-512F; the caller
            // guarantees the pointers.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::tile(t) },
            // SAFETY: detect() only returns Avx2 when the CPU supports AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { portable::tile_avx2(t) },
            // SAFETY: the caller guarantees the pointers.
            Kernel::Portable => unsafe { portable::tile(t) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, Tile};
    use core::arch::x86_64::*;

    /// Rows of A per pass over B in [`dot_rows`].
    pub(super) const DOT_ROWS: usize = 4;
    /// Rows of B (columns of C) per tile in [`dot_rows`].
    const DOT_COLS: usize = 4;

    /// `C = alpha * A * W^T + beta * C` by dot products of contiguous rows: A is `m x k`
    /// (`a[i]` is where row `i` starts; rows are contiguous), W is `n x k` (rows `ldw` apart,
    /// unit column stride) and C is `m x n` (rows `ldc` apart), `m = a.len()`. With
    /// `beta == 0`, C is not read.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and the pointers must address matrices of those shapes.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_rows(
        alpha: f32,
        a: &[*const f32],
        k: usize,
        w: *const f32,
        ldw: usize,
        n: usize,
        beta: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let m = a.len();
        let tiles = |r0: usize, rows: usize| {
            let mut a_rows = [std::ptr::null(); DOT_ROWS];
            a_rows[..rows].copy_from_slice(&a[r0..r0 + rows]);
            let mut j0 = 0;
            while j0 < n {
                let cols = DOT_COLS.min(n - j0);
                let t = DotTile {
                    alpha,
                    beta,
                    k,
                    // Rows r0..r0 + rows of A, rows j0..j0 + cols of W and that block of C
                    // are inside the caller's matrices.
                    a: a_rows,
                    w: w.wrapping_add(j0 * ldw),
                    ldw,
                    c: c.wrapping_add(r0 * ldc + j0),
                    ldc,
                };
                // Const sizes keep the accumulators in registers; edge blocks get their own
                // instances rather than masked work.
                macro_rules! sized {
                    ($($r:literal, $c:literal);*) => {
                        match (rows, cols) {
                            // SAFETY: the block is inside the caller's matrices (above).
                            $(($r, $c) => unsafe { dot_tile::<$r, $c>(&t) },)*
                            _ => unreachable!("blocks are at most DOT_ROWS x DOT_COLS"),
                        }
                    };
                }
                sized!(4, 4; 4, 3; 4, 2; 4, 1; 3, 4; 3, 3; 3, 2; 3, 1;
                       2, 4; 2, 3; 2, 2; 2, 1; 1, 4; 1, 3; 1, 2; 1, 1);
                j0 += cols;
            }
        };
        let mut r0 = 0;
        while r0 < m {
            let rows = DOT_ROWS.min(m - r0);
            tiles(r0, rows);
            r0 += rows;
        }
    }

    /// One tile of [`super::gemm_wt`]: `C^T[rows x pairs] = alpha * W A^T + beta * C^T`,
    /// stored into C transposed.
    pub(super) struct WtTile {
        /// Depth.
        pub(super) kc: usize,
        /// Where the first of the tile's rows of W starts (at the block's depth).
        pub(super) w: *const f32,
        /// Distance between rows of W.
        pub(super) ldw: usize,
        /// The packed strip of `A^T`: `kc` rows of `NR` values.
        pub(super) b: *const f32,
        /// Element (first pair, first row of W) of C.
        pub(super) c: *mut f32,
        /// Distance between rows of C.
        pub(super) ldc: usize,
        /// Rows of W in the tile (at most `MR`): columns of C.
        pub(super) rows: usize,
        /// Live columns of the strip (at most `NR`): rows of C.
        pub(super) pairs: usize,
        pub(super) alpha: f32,
        pub(super) beta: f32,
    }

    /// Computes one [`WtTile`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F and the pointers must address the memory described on
    /// [`WtTile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn wt_tile(t: &WtTile) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.rows {
                12 => wt_rows::<12>(t),
                11 => wt_rows::<11>(t),
                10 => wt_rows::<10>(t),
                9 => wt_rows::<9>(t),
                8 => wt_rows::<8>(t),
                7 => wt_rows::<7>(t),
                6 => wt_rows::<6>(t),
                5 => wt_rows::<5>(t),
                4 => wt_rows::<4>(t),
                3 => wt_rows::<3>(t),
                2 => wt_rows::<2>(t),
                _ => wt_rows::<1>(t),
            }
        }
    }

    /// [`wt_tile`] for `R == t.rows` rows of W: `2 R` accumulators, one broadcast of W and
    /// two FMAs per row and depth, as in [`rows`].
    ///
    /// # Safety
    /// As for [`wt_tile`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn wt_rows<const R: usize>(t: &WtTile) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let w_rows: [*const f32; R] = core::array::from_fn(|i| t.w.wrapping_add(i * t.ldw));
        let mut b = t.b;
        // SAFETY: each row of W has kc readable values from `w_rows[i]`, the strip kc rows of
        // NR values; the prefetches are hints that never fault.
        unsafe {
            let mut p = 0;
            while p < t.kc {
                // Twelve rows are more streams than the hardware prefetchers follow well: ask
                // for each row's line four lines ahead, once per line.
                for r in &w_rows {
                    _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(p + 64) as *const i8);
                }
                let end = (p + 16).min(t.kc);
                while p < end {
                    let b0 = _mm512_loadu_ps(b);
                    let b1 = _mm512_loadu_ps(b.add(16));
                    for (acc, r) in acc.iter_mut().zip(&w_rows) {
                        let wi = _mm512_set1_ps(*r.add(p));
                        acc[0] = _mm512_fmadd_ps(wi, b0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(wi, b1, acc[1]);
                    }
                    b = b.add(super::NR);
                    p += 1;
                }
            }
        }
        // Transpose the tile through the stack: row i of `tile` is C^T's row i (W's row),
        // row r of `out` is C's row r with its R values in lanes 0..R.
        let mut tile = [[0.0f32; super::NR]; R];
        for (row, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: each row of `tile` holds NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            }
        }
        let mut out = [[0.0f32; 16]; super::NR];
        for half in 0..2 {
            let starts: [usize; R] = core::array::from_fn(|i| i * super::NR + 16 * half);
            // SAFETY: R <= 16 source vectors of 16 floats inside `tile`, 16 destination rows
            // of 16 floats inside `out`, and AVX-512F is present.
            unsafe {
                transpose_block(
                    tile.as_ptr().cast(),
                    &starts,
                    16,
                    out[16 * half..].as_mut_ptr().cast(),
                    16,
                    16,
                )
            };
        }
        let live = mask(R);
        let (alpha, beta) = (_mm512_set1_ps(t.alpha), _mm512_set1_ps(t.beta));
        for (r, row) in out.iter().enumerate().take(t.pairs) {
            // SAFETY: row r < pairs of the C block has R writable values at c + r * ldc, and
            // the mask keeps the loads and stores to them.
            unsafe {
                let c = t.c.add(r * t.ldc);
                let mut v = _mm512_mul_ps(alpha, _mm512_loadu_ps(row.as_ptr()));
                // beta == 0 must not read C: it may hold NaN.
                if t.beta != 0.0 {
                    v = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(live, c), v);
                }
                _mm512_mask_storeu_ps(c, live, v);
            }
        }
    }

    /// One block of [`dot_rows`]: where A's and W's rows start, and where C's block starts.
    struct DotTile {
        alpha: f32,
        beta: f32,
        k: usize,
        /// Where each row of the block's A starts (the first `R` are used).
        a: [*const f32; DOT_ROWS],
        w: *const f32,
        ldw: usize,
        c: *mut f32,
        ldc: usize,
    }

    /// An `R x C` block of [`dot_rows`] (`R <= DOT_ROWS`, `C <= DOT_COLS`): the accumulators
    /// stay in registers over the whole depth and are summed across lanes once.
    ///
    /// # Safety
    /// As for [`dot_rows`], for the block's rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_tile<const R: usize, const C: usize>(t: &DotTile) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut p = 0;
        while p < t.k {
            let live = (t.k - p).min(16);
            let lanes: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
            let mut wv = [_mm512_setzero_ps(); C];
            for (j, v) in wv.iter_mut().enumerate() {
                // SAFETY: lanes past `live` are masked off, the rest lie in row j of W.
                *v = unsafe { _mm512_maskz_loadu_ps(lanes, t.w.add(j * t.ldw + p)) };
                // The next block's rows of W, one tile ahead: a module's weights usually come
                // from beyond L2 on the first pass. A hint only: it never faults, and
                // `wrapping_add` keeps the address computation defined past the end of W.
                let next = t.w.wrapping_add((j + C) * t.ldw + p);
                _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
            }
            for (i, acc_i) in acc.iter_mut().enumerate() {
                // SAFETY: as above, in row i of A.
                let av = unsafe { _mm512_maskz_loadu_ps(lanes, t.a[i].add(p)) };
                for (acc_ij, v) in acc_i.iter_mut().zip(&wv) {
                    *acc_ij = _mm512_fmadd_ps(av, *v, *acc_ij);
                }
            }
            p += 16;
        }
        // A full block sums its sixteen accumulators together (see `sum_4x4`); edge blocks,
        // rarer, reduce each one on its own.
        let full = if R == 4 && C == 4 {
            Some(sum_4x4(|i, j| acc[i][j]))
        } else {
            None
        };
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, acc_ij) in acc_i.iter().enumerate() {
                let sum = full.map_or_else(|| _mm512_reduce_add_ps(*acc_ij), |s| s[4 * j + i]);
                let dot = t.alpha * sum;
                // SAFETY: (i, j) is inside the block of C.
                unsafe {
                    let dst = t.c.add(i * t.ldc + j);
                    *dst = if t.beta == 0.0 {
                        dot
                    } else {
                        dot + t.beta * *dst
                    };
                }
            }
        }
    }

    /// The lane sums of a 4 x 4 block of vectors `v(i, j)`, element `4 j + i` holding the sum
    /// of `v(i, j)`. Reducing each vector on its own takes four shuffle-and-add rounds apiece
    /// (64 shuffles, all on one port, for a block); adding them pairwise while shuffling, as a
    /// transpose does, takes 20 shuffles for all sixteen. For a depth of 512 that was about a
    /// third of the block's time.
    #[target_feature(enable = "avx512f")]
    fn sum_4x4(v: impl Fn(usize, usize) -> __m512) -> [f32; 16] {
        // Per row i: fold the four vectors into one whose 128-bit lane j holds four partial
        // sums of v(i, j).
        let row = |i: usize| {
            let (a, b, c, d) = (v(i, 0), v(i, 1), v(i, 2), v(i, 3));
            // [a.L0 + a.L2, a.L1 + a.L3, b.L0 + b.L2, b.L1 + b.L3], likewise for c and d.
            let ab = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            );
            let cd = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(c, d),
                _mm512_shuffle_f32x4::<0xEE>(c, d),
            );
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(ab, cd),
                _mm512_shuffle_f32x4::<0xDD>(ab, cd),
            )
        };
        let (q0, q1, q2, q3) = (row(0), row(1), row(2), row(3));
        // Within each 128-bit lane, a 4 x 4 transpose-and-add of the rows' partial sums:
        // afterwards element i of lane j is the total of v(i, j).
        let s01 = _mm512_add_ps(_mm512_unpacklo_ps(q0, q1), _mm512_unpackhi_ps(q0, q1));
        let s23 = _mm512_add_ps(_mm512_unpacklo_ps(q2, q3), _mm512_unpackhi_ps(q2, q3));
        let total = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(s01, s23),
            _mm512_shuffle_ps::<0xEE>(s01, s23),
        );
        let mut out = [0.0f32; 16];
        // SAFETY: `out` holds 16 floats, and the unaligned store needs no alignment.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), total) };
        out
    }

    /// The AVX-512 microkernel for one tile.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and `t` must satisfy the contract of [`Tile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(t: &Tile) {
        // Column masks: lanes past `nr` are neither loaded from B nor stored to C.
        let m0 = mask(t.nr);
        let m1 = mask(t.nr.saturating_sub(16));
        // Packed strips are contiguous and the hardware prefetchers follow them; B read in
        // place is one short row per page-sized stride, which they do not, so that path
        // prefetches a few depths ahead in software.
        // SAFETY: forwarded from the caller.
        unsafe {
            if t.ldb == super::NR {
                by_rows::<false>(t, m0, m1)
            } else {
                by_rows::<true>(t, m0, m1)
            }
        }
    }

    /// Dispatches on the number of live rows so that edge tiles do only the work they need.
    ///
    /// # Safety
    /// As for [`tile`].
    #[target_feature(enable = "avx512f")]
    unsafe fn by_rows<const PF: bool>(t: &Tile, m0: __mmask16, m1: __mmask16) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.mr {
                12 => rows::<12, 1, PF>(t, m0, m1),
                11 => rows::<11, 1, PF>(t, m0, m1),
                10 => rows::<10, 1, PF>(t, m0, m1),
                9 => rows::<9, 1, PF>(t, m0, m1),
                8 => rows::<8, 1, PF>(t, m0, m1),
                7 => rows::<7, 1, PF>(t, m0, m1),
                6 => rows::<6, 1, PF>(t, m0, m1),
                5 => rows::<5, 1, PF>(t, m0, m1),
                4 => rows::<4, 1, PF>(t, m0, m1),
                // Short tiles have too few accumulators to hide the FMA latency on their
                // own, so they keep four interleaved sets of partial sums.
                3 => rows::<3, 4, PF>(t, m0, m1),
                2 => rows::<2, 4, PF>(t, m0, m1),
                _ => rows::<1, 4, PF>(t, m0, m1),
            }
        }
    }

    /// The vector form of [`super::transpose_block`]: a 16 x 16 transpose in registers
    /// (unpack, then in-lane shuffles, then two rounds of 128-bit lane shuffles).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `starts.len()`, `len`, `lanes` are at most 16 with
    /// `starts.len() <= lanes`; source vector `v` must have `len` readable floats at
    /// `src + starts[v]` and destination vector `q < len` must have `lanes` writable floats at
    /// `dst + q * dst_stride`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_block(
        src: *const f32,
        starts: &[usize],
        len: usize,
        dst: *mut f32,
        dst_stride: usize,
        lanes: usize,
    ) {
        let load_mask = mask(len);
        let mut r = [_mm512_setzero_ps(); 16];
        for (r, &start) in r.iter_mut().zip(starts) {
            // SAFETY: each source vector has `len` readable floats, and the mask loads no more.
            *r = unsafe { _mm512_maskz_loadu_ps(load_mask, src.add(start)) };
            // Packing walks up to sixteen source rows in parallel, more streams than the
            // hardware prefetchers follow well: ask for each row's data four blocks ahead (a
            // hint that never faults; `wrapping_add` keeps the address arithmetic defined).
            let ahead = src.wrapping_add(start + 64);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        }
        // Stage 1: interleave pairs of rows.
        let mut t = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            t[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
            t[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
        }
        // Stage 2: within each 128-bit lane, gather one element of four rows: afterwards
        // r[4g + e] holds, in lane c, element 4c + e of rows 4g..4g + 4.
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            r[4 * g] = _mm512_shuffle_ps::<0x44>(a, c);
            r[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            r[4 * g + 2] = _mm512_shuffle_ps::<0x44>(b, d);
            r[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
        }
        // Stages 3 and 4: move 128-bit lanes so that vector 4c + e holds element 4c + e of
        // all sixteen rows.
        for e in 0..4 {
            let even01 = _mm512_shuffle_f32x4::<0x88>(r[e], r[4 + e]);
            let odd01 = _mm512_shuffle_f32x4::<0xDD>(r[e], r[4 + e]);
            let even23 = _mm512_shuffle_f32x4::<0x88>(r[8 + e], r[12 + e]);
            let odd23 = _mm512_shuffle_f32x4::<0xDD>(r[8 + e], r[12 + e]);
            t[e] = _mm512_shuffle_f32x4::<0x88>(even01, even23);
            t[8 + e] = _mm512_shuffle_f32x4::<0xDD>(even01, even23);
            t[4 + e] = _mm512_shuffle_f32x4::<0x88>(odd01, odd23);
            t[12 + e] = _mm512_shuffle_f32x4::<0xDD>(odd01, odd23);
        }
        let store_mask = mask(lanes);
        for (q, t) in t.iter().enumerate().take(len) {
            // SAFETY: destination vector q < len has `lanes` writable floats.
            unsafe { _mm512_mask_storeu_ps(dst.add(q * dst_stride), store_mask, *t) };
        }
    }

    /// Depths up to which a tile also prefetches the next strip's C (see [`rows`]).
    const SHALLOW_DEPTH: usize = 64;

    /// How many depths ahead the in-place B path prefetches. A 12-row tile spends about 12
    /// cycles per depth, so 64 depths ask for each line some 750 cycles before its use: enough
    /// for a module's weights that come from L3 or memory rather than L2. Measured on the 2-core
    /// Xeon, `[16 x 512] x [512 x 512]` over 64 modules' weights (single thread, weights not in
    /// L2) took 14.3 ms on average over three paired runs against 20.9 ms with 8 depths.
    const PREFETCH_DEPTHS: usize = 64;

    fn mask(live: usize) -> __mmask16 {
        if live >= 16 {
            0xffff
        } else {
            ((1u32 << live) - 1) as __mmask16
        }
    }

    /// The `R x 32` microkernel: `2 * R` zmm accumulators, one FMA with an embedded broadcast
    /// of `A` per accumulator and depth.
    ///
    /// # Safety
    /// As for [`tile`], with `R == t.mr`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows<const R: usize, const S: usize, const PF: bool>(
        t: &Tile,
        m0: __mmask16,
        m1: __mmask16,
    ) {
        // S sets of accumulators; depth p goes to set p % S (S divides the unroll of four).
        let mut sets = [[[_mm512_setzero_ps(); 2]; R]; S];
        let (mut a, mut b) = (t.a, t.b);
        // Fetch the C tile while the depth loop runs: it is touched only at the end, and for
        // tall products it has long left the caches since the previous depth block. A row of
        // the tile (32 floats) spans three cache lines unless it starts on a line boundary,
        // which buffers from the system allocator usually do not (glibc returns large blocks
        // 16 bytes past a page boundary), so every prefetch of a 32-float row here names its
        // first, middle and last float; on an aligned row the last two share a line.
        for i in 0..R {
            let c = t.c.wrapping_add(i * t.ldc);
            _mm_prefetch::<_MM_HINT_T0>(c as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(16) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(t.nr - 1) as *const i8);
            // With a shallow depth (a weight gradient over a few routed rows) the tile is
            // mostly the store of C, and this tile's prefetch comes too late to hide it: ask
            // for the next strip's C as well. A hint only: it never faults, and
            // `wrapping_add` keeps the address computation defined past the end of C.
            if t.kc <= SHALLOW_DEPTH {
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(super::NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(super::NR + 16) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(2 * super::NR - 1) as *const i8);
            }
        }
        // SAFETY: `a` walks kc depths of MR packed values; `b` walks kc rows `ldb` apart whose
        // first `nr` values are readable, and the masks keep the loads within those values.
        unsafe {
            // One depth step: two vectors of B, R broadcasts of A, 2R FMAs.
            let step = |acc: &mut [[__m512; 2]; R], a: &mut *const f32, b: &mut *const f32| {
                if PF {
                    // The first, middle and last float of the row: three lines when B is
                    // not line-aligned (with 64 modules' weights 16 bytes off a line,
                    // `[16 x 512] x [512 x 512]` ran 1.44x slower without the third). A hint
                    // only: it never faults, and `wrapping_add` keeps the address computation
                    // defined past the end of B.
                    let ahead = b.wrapping_add(PREFETCH_DEPTHS * t.ldb);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(t.nr - 1) as *const i8);
                }
                let b0 = _mm512_maskz_loadu_ps(m0, *b);
                let b1 = _mm512_maskz_loadu_ps(m1, b.add(16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.add(i));
                    acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
                }
                *a = a.add(MR);
                *b = b.add(t.ldb);
            };
            // Unrolled by four so that loop control is a small share of the issue slots.
            for _ in 0..t.kc / 4 {
                step(&mut sets[0], &mut a, &mut b);
                step(&mut sets[1 % S], &mut a, &mut b);
                step(&mut sets[2 % S], &mut a, &mut b);
                step(&mut sets[3 % S], &mut a, &mut b);
            }
            for _ in 0..t.kc % 4 {
                step(&mut sets[0], &mut a, &mut b);
            }
        }
        let mut acc = sets[0];
        for set in &sets[1..] {
            for (acc, part) in acc.iter_mut().zip(set) {
                acc[0] = _mm512_add_ps(acc[0], part[0]);
                acc[1] = _mm512_add_ps(acc[1], part[1]);
            }
        }
        let alpha = _mm512_set1_ps(t.alpha);
        let beta = _mm512_set1_ps(t.beta);
        // SAFETY: row i of the C tile has `nr` writable values at c + i * ldc, and the masks
        // restrict loads and stores to them.
        unsafe {
            for (i, acc) in acc.iter().enumerate() {
                let c = t.c.add(i * t.ldc);
                let (mut r0, mut r1) = (_mm512_mul_ps(alpha, acc[0]), _mm512_mul_ps(alpha, acc[1]));
                // beta == 0 must not read C: it may hold NaN or garbage.
                if t.beta != 0.0 {
                    r0 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(m0, c), r0);
                    r1 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(m1, c.add(16)), r1);
                }
                if !t.bias.is_null() {
                    r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, t.bias));
                    r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, t.bias.add(16)));
                }
                _mm512_mask_storeu_ps(c, m0, r0);
                _mm512_mask_storeu_ps(c.add(16), m1, r1);
            }
        }
    }
}

mod portable {
    use super::{MR, NR, Tile};

    /// The portable microkernel compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA and `t` must satisfy the contract of [`Tile`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(t: &Tile) {
        // SAFETY: forwarded from the caller; inlining compiles `tile` with AVX2 and FMA.
        unsafe { tile(t) }
    }

    /// A plain-Rust microkernel over the same packed layout, written so that the compiler
    /// vectorises the `NR` loop.
    ///
    /// # Safety
    /// `t` must satisfy the contract of [`Tile`].
    #[inline(always)]
    pub(super) unsafe fn tile(t: &Tile) {
        let mut acc = [[0.0f32; NR]; MR];
        let mut brow = [0.0f32; NR];
        for p in 0..t.kc {
            // SAFETY: depth p of the packed A strip holds MR values, and row p of B holds at
            // least nr readable values.
            let (arow, bsrc) = unsafe {
                (
                    std::slice::from_raw_parts(t.a.add(p * MR), MR),
                    std::slice::from_raw_parts(t.b.add(p * t.ldb), t.nr),
                )
            };
            brow[..t.nr].copy_from_slice(bsrc);
            for (acc, &av) in acc.iter_mut().zip(arow) {
                for (c, &bv) in acc.iter_mut().zip(&brow) {
                    // A separate multiply and add: `mul_add` would call the slow
                    // libm `fmaf` on CPUs without FMA.
                    *c += av * bv;
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(t.mr) {
            for (j, &v) in acc.iter().enumerate().take(t.nr) {
                // SAFETY: row i of the C tile has nr writable values, and a non-null bias nr
                // readable ones. C is written through the pointer (it may not be initialised)
                // and read only when beta != 0 (it may hold NaN or garbage otherwise).
                unsafe {
                    let c = t.c.add(i * t.ldc + j);
                    let old = if t.beta == 0.0 {
                        0.0
                    } else {
                        t.beta * c.read()
                    };
                    let bias = if t.bias.is_null() {
                        0.0
                    } else {
                        t.bias.add(j).read()
                    };
                    c.write(t.alpha * v + old + bias);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every kernel this CPU can run computes the same tiles as a plain loop, for every edge
    /// size, with and without reading C (NaN in C must not leak through when beta == 0).
    #[test]
    fn kernels_agree_with_a_plain_loop() {
        #[allow(unused_mut)] // Only x86-64 adds vector kernels.
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for kc in [1, 3, 4, 17] {
            let a: Vec<f32> = (0..kc * MR).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ldb = NR + 5;
            let b: Vec<f32> = (0..kc * ldb).map(|_| rng.random_range(-1.0..1.0)).collect();
            for mr in 1..=MR {
                for nr in [1, 15, 16, 17, 31, 32] {
                    for (alpha, beta, with_bias) in [
                        (1.0f32, 0.0f32, false),
                        (-0.5, 2.0, false),
                        (0.5, 0.0, true),
                    ] {
                        let bias: Vec<f32> = (0..NR).map(|j| j as f32 * 0.25 - 3.0).collect();
                        let ldc = NR + 3;
                        let c0: Vec<f32> = (0..MR * ldc)
                            .map(|_| {
                                if beta == 0.0 {
                                    f32::NAN
                                } else {
                                    rng.random_range(-1.0..1.0)
                                }
                            })
                            .collect();
                        let mut want = c0.clone();
                        for i in 0..mr {
                            for j in 0..nr {
                                let dot: f32 =
                                    (0..kc).map(|p| a[p * MR + i] * b[p * ldb + j]).sum();
                                let old = if beta == 0.0 {
                                    0.0
                                } else {
                                    beta * c0[i * ldc + j]
                                };
                                let b = if with_bias { bias[j] } else { 0.0 };
                                want[i * ldc + j] = alpha * dot + old + b;
                            }
                        }
                        for &kern in &kernels {
                            let mut c = c0.clone();
                            let tile = Tile {
                                kc,
                                a: a.as_ptr(),
                                b: b.as_ptr(),
                                ldb,
                                c: c.as_mut_ptr(),
                                ldc,
                                mr,
                                nr,
                                alpha,
                                beta,
                                bias: if with_bias {
                                    bias.as_ptr()
                                } else {
                                    std::ptr::null()
                                },
                            };
                            // SAFETY: a holds kc x MR values, b holds kc rows of ldb >= nr
                            // values, c holds MR rows of ldc >= nr values; the kernel list only
                            // has variants this CPU supports.
                            unsafe { kern.run(&tile) };
                            for (idx, (g, w)) in c.iter().zip(&want).enumerate() {
                                let (i, j) = (idx / ldc, idx % ldc);
                                if i < mr && j < nr {
                                    assert!(
                                        (g - w).abs() <= 1e-5 * (kc as f32 + 1.0),
                                        "{kern:?} kc={kc} mr={mr} nr={nr} ({i},{j}): {g} vs {w}"
                                    );
                                } else {
                                    assert!(
                                        g.to_bits() == w.to_bits(),
                                        "{kern:?} wrote outside its tile at ({i},{j})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The vector transpose matches the portable one for every block shape.
    #[test]
    fn transposes_agree() {
        let src: Vec<f32> = (0..16 * 21).map(|v| v as f32).collect();
        for nv in 0..=16 {
            for len in 0..=16 {
                for lanes in [nv.max(1), 12, 16] {
                    if nv > lanes {
                        continue;
                    }
                    // Source vectors out of order and repeated, as gathered rows come.
                    let starts: Vec<usize> = (0..nv).map(|v| (v * 5 + 3) % 13 * 21).collect();
                    let mut want = vec![-1.0; 16 * 19];
                    transpose_block_scalar(&src, &starts, len, &mut want, 19, lanes);
                    let mut got = vec![-1.0; 16 * 19];
                    transpose_block(&src, &starts, len, &mut got, 19, lanes);
                    assert_eq!(got, want, "nv={nv} len={len} lanes={lanes}");
                }
            }
        }
    }
}
