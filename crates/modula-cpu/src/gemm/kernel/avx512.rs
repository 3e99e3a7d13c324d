//! The AVX-512 kernels (x86-64 with AVX-512F, detected at run time).

use super::{MR, Tile};
use core::arch::x86_64::*;

/// Rows of A per pass over B in [`dot_rows`].
pub(crate) const DOT_ROWS: usize = 4;
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
pub(crate) unsafe fn dot_rows(
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
pub(crate) struct WtTile {
    /// Depth.
    pub(crate) kc: usize,
    /// Where the first of the tile's rows of W starts (at the block's depth).
    pub(crate) w: *const f32,
    /// Distance between rows of W.
    pub(crate) ldw: usize,
    /// The packed strip of `A^T`: `kc` rows of `NR` values.
    pub(crate) b: *const f32,
    /// Element (first pair, first row of W) of C.
    pub(crate) c: *mut f32,
    /// Distance between rows of C.
    pub(crate) ldc: usize,
    /// Rows of W in the tile (at most `MR`): columns of C.
    pub(crate) rows: usize,
    /// Live columns of the strip (at most `NR`): rows of C.
    pub(crate) pairs: usize,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
}

/// Computes one [`WtTile`].
///
/// # Safety
/// The CPU must support AVX-512F and the pointers must address the memory described on
/// [`WtTile`].
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn wt_tile(t: &WtTile) {
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
pub(crate) unsafe fn tile(t: &Tile) {
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
pub(crate) unsafe fn transpose_block(
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
