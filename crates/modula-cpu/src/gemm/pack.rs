//! Packing of `op(B)` into `KC x NR` strips ([`PackedRhs`]) and of `op(A)` into `MR x KC`
//! strips, and the per-thread scratch buffers that hold packed blocks between calls.

#[cfg(target_arch = "x86_64")]
use super::kernel::avx512;
use super::kernel::{Kernel, MR, NR};
use super::view::MatRef;
use super::{KC, PAR_MIN_PACK, Parallelism};

/// `op(B)` packed once for reuse across many products `C = alpha * A * B + beta * C`.
///
/// Layout: for each depth block of `KC` rows, `ceil(n / NR)` strips of `kc x NR` floats,
/// row-major inside a strip, zero-padded past column `n`. Packing costs one pass over `B`;
/// afterwards each [`gemm_packed`](super::gemm_packed) call only packs its (small) `A`.
///
/// ```
/// use modula_cpu::gemm::{gemm_packed, MatMut, MatRef, PackedRhs, Parallelism};
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
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) buf: AlignedBuf,
}

impl PackedRhs {
    /// Packs `b` (`k x n`, any strides).
    pub fn new(b: MatRef<'_>, par: Parallelism) -> Self {
        Self::pack_into(b, par, AlignedBuf::default())
    }

    /// Packs `b` into `buf`, reusing its allocation when it is large enough.
    pub(super) fn pack_into(b: MatRef<'_>, par: Parallelism, buf: AlignedBuf) -> Self {
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
        let par = if k * n >= PAR_MIN_PACK {
            par
        } else {
            Parallelism::Sequential
        };
        par.for_each(pieces, &pack);
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
    pub(super) fn strip(&self, p0: usize, j0: usize) -> &[f32] {
        let strips = self.n.div_ceil(NR);
        let kc = KC.min(self.k - p0);
        let start = p0 * strips * NR + (j0 / NR) * kc * NR;
        &self.buf.as_slice()[start..start + kc * NR]
    }
}

/// Packs columns `j0..j0 + NR` of rows `p0..p0 + kc` of `b` into `out` (`kc x NR`, row-major,
/// zero past the last column).
pub(super) fn pack_b_strip(b: &MatRef<'_>, p0: usize, kc: usize, j0: usize, out: &mut [f32]) {
    let w = NR.min(b.cols - j0);
    if w < NR {
        // The last strip is zero-padded; buffers are reused, so clear it explicitly.
        out.fill(0.0);
    }
    if b.col_stride == 1 && b.col_map.is_none() {
        // Rows of the strip are contiguous in B: plain copies (from gathered rows, if B reads
        // its rows through an index).
        // A full strip copies a length known at compile time, which compiles to a few vector
        // moves; a variable length calls `memmove`, whose call and dispatch cost more than
        // the copy itself.
        for (p, row) in out.chunks_exact_mut(NR).enumerate() {
            let start = b.row_offset(p0 + p) + j0;
            if w == NR {
                row.copy_from_slice(&b.data[start..start + NR]);
            } else {
                row[..w].copy_from_slice(&b.data[start..start + w]);
            }
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
pub(super) fn pack_a_strip(
    a: &MatRef<'_>,
    i0: usize,
    mr: usize,
    p0: usize,
    kc: usize,
    out: &mut [f32],
) {
    let out = &mut out[..kc * MR];
    if a.row_stride == 1 && a.row_map.is_none() {
        // A transposed A: the rows of one depth are contiguous (the depths may be gathered
        // rows of the stored matrix).
        // A full strip copies a length known at compile time, as in `pack_b_strip`.
        for (p, dst) in out.chunks_exact_mut(MR).enumerate() {
            let start = a.col_offset(p0 + p) + i0;
            if mr == MR {
                dst.copy_from_slice(&a.data[start..start + MR]);
            } else {
                dst[..mr].copy_from_slice(&a.data[start..start + mr]);
                dst[mr..].fill(0.0);
            }
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
    if matches!(Kernel::detect(), Kernel::Avx512) {
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
pub(crate) struct AlignedBuf {
    pub(super) vec: Vec<f32>,
    pub(super) offset: usize,
    pub(super) len: usize,
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
    /// An empty buffer (no allocation), for `const` thread-local initialisers.
    pub(crate) const EMPTY: AlignedBuf = AlignedBuf {
        vec: Vec::new(),
        offset: 0,
        len: 0,
    };

    /// This buffer resized to `len` elements: the allocation is kept (with stale contents)
    /// when it is large enough, otherwise replaced by a zeroed one.
    pub(crate) fn with_len(self, len: usize) -> Self {
        if !self.vec.is_empty() && self.offset + len <= self.vec.len() {
            AlignedBuf { len, ..self }
        } else {
            Self::zeroed(len)
        }
    }

    pub(super) fn zeroed(len: usize) -> Self {
        let vec = vec![0.0f32; len + 16];
        let offset = vec.as_ptr().align_offset(64).min(16);
        AlignedBuf { vec, offset, len }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.vec[self.offset..self.offset + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.vec[self.offset..self.offset + self.len]
    }
}

/// Scratch buffers larger than this (16 MiB) are freed after use rather than cached.
pub(super) const MAX_CACHED_FLOATS: usize = 1 << 22;

thread_local! {
    /// Per-thread scratch for the packed B of [`gemm`] (taken while in use, so a nested call
    /// on the same thread simply allocates its own).
    pub(super) static B_BUFFER: std::cell::Cell<AlignedBuf> = const {
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
pub(super) fn with_a_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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

#[cfg(test)]
mod tests {
    use super::*;

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
