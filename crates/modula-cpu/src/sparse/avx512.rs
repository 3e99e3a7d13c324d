//! AVX-512 forms of the sparse kernels. Every function requires AVX-512F (the two that count
//! kept lanes POPCNT too), which the callers in `super` check once ([`super::Isa`]) before
//! calling any of them.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use modula_sparse::Select;

use super::{BPanel, Init, PANEL, RowsPanel, Sampled, next_part, row_in};

/// Vectors per panel.
const V: usize = PANEL / 16;

/// The lanes of `v` that `select` keeps (NaN included, as `Select::keeps` does).
#[target_feature(enable = "avx512f")]
fn keep_mask(v: __m512, select: Select) -> __mmask16 {
    let t = _mm512_set1_ps(select.threshold());
    match select {
        Select::Magnitude(_) => _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_abs_ps(v), t),
        Select::Relu => _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(v, t),
    }
}

/// The mask of the first `len` lanes (`len <= 16`).
fn first(len: usize) -> __mmask16 {
    ((1u32 << len) - 1) as __mmask16
}

/// As `portable::compress_row`, sixteen elements at a time: the kept lanes are compressed
/// in registers (a compress straight to memory is microcoded and slow on some CPUs) and
/// stored as whole vectors, so `idx` and `val` need sixteen slots of slack.
///
/// # Safety
/// AVX-512F and POPCNT must be present, and `idx` and `val` must hold at least `row.len() + 16`
/// slots.
// POPCNT counts the kept lanes in one instruction; without it the count is a dozen.
#[target_feature(enable = "avx512f,popcnt")]
pub(super) unsafe fn compress_row(
    row: &[f32],
    select: Select,
    idx: &mut [MaybeUninit<u32>],
    val: &mut [MaybeUninit<f32>],
) -> usize {
    debug_assert!(idx.len() >= row.len() + 16 && val.len() >= row.len() + 16);
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (ip, vp) = (
        idx.as_mut_ptr().cast::<u32>(),
        val.as_mut_ptr().cast::<f32>(),
    );
    let mut n = 0usize;
    for j in (0..row.len()).step_by(16) {
        let lanes = first((row.len() - j).min(16));
        // SAFETY: the masked load reads only the row's remaining elements; the stores write
        // sixteen slots from `n <= j`, inside the `row.len() + 16` slots the caller provides.
        unsafe {
            let v = _mm512_maskz_loadu_ps(lanes, row.as_ptr().add(j));
            let keep = keep_mask(v, select) & lanes;
            let cols = _mm512_add_epi32(iota, _mm512_set1_epi32(j as i32));
            _mm512_storeu_ps(vp.add(n), _mm512_maskz_compress_ps(keep, v));
            _mm512_storeu_si512(ip.add(n).cast(), _mm512_maskz_compress_epi32(keep, cols));
            n += keep.count_ones() as usize;
        }
    }
    n
}

/// How many elements of `data` `select` keeps.
///
/// # Safety
/// AVX-512F and POPCNT must be present.
// POPCNT counts the kept lanes in one instruction; without it the count is a dozen.
#[target_feature(enable = "avx512f,popcnt")]
pub(super) unsafe fn count_kept(data: &[f32], select: Select) -> usize {
    let mut n = 0usize;
    for j in (0..data.len()).step_by(16) {
        let lanes = first((data.len() - j).min(16));
        // SAFETY: the masked load reads only elements of `data`.
        let v = unsafe { _mm512_maskz_loadu_ps(lanes, data.as_ptr().add(j)) };
        n += (keep_mask(v, select) & lanes).count_ones() as usize;
    }
    n
}

/// Sets bit `j` of `bits` (ORs it in) for every element `j` of `row` that `select` keeps.
///
/// # Safety
/// AVX-512F must be present, and `bits` must hold at least `row.len()` bits.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn or_kept_bits(row: &[f32], select: Select, bits: &mut [u64]) {
    for j in (0..row.len()).step_by(16) {
        let lanes = first((row.len() - j).min(16));
        // SAFETY: the masked load reads only elements of `row`.
        let v = unsafe { _mm512_maskz_loadu_ps(lanes, row.as_ptr().add(j)) };
        // j is a multiple of 16, so its sixteen bits lie in one word.
        bits[j / 64] |= u64::from(keep_mask(v, select) & lanes) << (j % 64);
    }
}

/// Rows `rows` x columns `j0..j0 + width` (one panel) of `C = S B + beta C + 1 bias^T`,
/// reading `B`'s columns from `panel` and only the stored entries whose column lies in
/// `depth`: a call whose `depth` starts at 0 starts each row from `beta C + bias`, a later one
/// adds to what the previous call left in `C`. A full panel keeps eight vectors of a row of
/// `C` in registers, a partial one goes a vector at a time.
///
/// # Safety
/// AVX-512F must be present; `p.c` addresses the `n x m` output, whose block
/// `rows x j0..j0 + width` no other thread writes; `panel` holds `width` columns of every row
/// `q` below `k`, and the stored columns of `p.s` are below `k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn csr_rows(
    p: &RowsPanel<'_>,
    rows: Range<usize>,
    j0: usize,
    width: usize,
    depth: Range<usize>,
    cursor: &mut [u32],
    panel: &BPanel<'_>,
) {
    let init = Init::of(&depth);
    for (i, at) in rows.zip(cursor) {
        let (idx, vals) = next_part(p.s, i, at, depth.end);
        if idx.is_empty() && matches!(init, Init::Continue) {
            // Nothing to add to what an earlier slice left in C.
            continue;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            if width == PANEL {
                csr_panel(p, i, j0, idx, vals, init, panel)
            } else {
                csr_partial(p, i, j0, width, idx, vals, init, panel)
            }
        }
    }
}

/// One full panel of row `i` of `C`, from column `j0`, over the stored entries `idx`, `vals`.
///
/// # Safety
/// As [`csr_rows`], with `width == PANEL`.
#[target_feature(enable = "avx512f")]
unsafe fn csr_panel(
    p: &RowsPanel<'_>,
    i: usize,
    j0: usize,
    idx: &[u32],
    vals: &[f32],
    init: Init,
    panel: &BPanel<'_>,
) {
    let m = p.m;
    // SAFETY: the caller guarantees the pointers: row i's columns j0..j0 + PANEL lie in C and
    // in the bias, and the panel holds PANEL columns of row q for every stored column q.
    unsafe {
        let c = p.c.0.add(i * m + j0);
        let mut acc = [_mm512_setzero_ps(); V];
        match init {
            Init::Continue => {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(c.add(16 * v));
                }
            }
            Init::Start => {
                if p.beta != 0.0 {
                    let beta = _mm512_set1_ps(p.beta);
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_mul_ps(beta, _mm512_loadu_ps(c.add(16 * v)));
                    }
                }
                if let Some(bias) = p.bias {
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_add_ps(*a, _mm512_loadu_ps(bias.as_ptr().add(j0 + 16 * v)));
                    }
                }
            }
        }
        let b = panel.b.as_ptr();
        for (&q, &s) in idx.iter().zip(vals) {
            let row = b.add(q as usize * panel.ld);
            let s = _mm512_set1_ps(s);
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(s, _mm512_loadu_ps(row.add(16 * v)), *a);
            }
        }
        for (v, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(16 * v), *a);
        }
    }
}

/// A partial panel (`width < PANEL` columns) of row `i` of `C`, one vector at a time, over the
/// stored entries `idx`, `vals`.
///
/// # Safety
/// As [`csr_rows`].
#[allow(clippy::too_many_arguments)] // csr_panel's arguments and the width.
#[target_feature(enable = "avx512f")]
unsafe fn csr_partial(
    p: &RowsPanel<'_>,
    i: usize,
    j0: usize,
    width: usize,
    idx: &[u32],
    vals: &[f32],
    init: Init,
    panel: &BPanel<'_>,
) {
    let m = p.m;
    for v0 in (0..width).step_by(16) {
        let lanes = first((width - v0).min(16));
        let j = j0 + v0;
        // SAFETY: masked loads and stores touch only columns j..j + lanes of row i (C, the
        // bias) and of the stored rows of the panel, all inside their slices.
        unsafe {
            let c = p.c.0.add(i * m + j);
            let mut acc = _mm512_setzero_ps();
            match init {
                Init::Continue => acc = _mm512_maskz_loadu_ps(lanes, c),
                Init::Start => {
                    if p.beta != 0.0 {
                        acc =
                            _mm512_mul_ps(_mm512_set1_ps(p.beta), _mm512_maskz_loadu_ps(lanes, c));
                    }
                    if let Some(bias) = p.bias {
                        acc =
                            _mm512_add_ps(acc, _mm512_maskz_loadu_ps(lanes, bias.as_ptr().add(j)));
                    }
                }
            }
            for (&q, &s) in idx.iter().zip(vals) {
                let row = panel.b.as_ptr().add(q as usize * panel.ld + v0);
                acc = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_maskz_loadu_ps(lanes, row), acc);
            }
            _mm512_mask_storeu_ps(c, lanes, acc);
        }
    }
}

/// The stored entries of rows `rows` with columns in `cols` of `(dY W^T)`, added into
/// `p.out`: for each panel of `dY`'s row (eight vectors in registers, zero past the end),
/// each stored `(i, q)` takes the dot product with the same columns of row `q` of `W`.
///
/// # Safety
/// AVX-512F must be present; `p.out` addresses the `n x k` output, whose stored positions in
/// this block no other thread writes; `p.dy` is `n x m`, `p.w` is `k x m`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sampled_rows(p: &Sampled<'_>, rows: Range<usize>, cols: Range<usize>) {
    let (m, k) = (p.m, p.s.cols());
    for j0 in (0..m).step_by(PANEL) {
        let width = PANEL.min(m - j0);
        let mut lanes = [0 as __mmask16; V];
        for (v, l) in lanes.iter_mut().enumerate() {
            *l = first(width.saturating_sub(16 * v).min(16));
        }
        for i in rows.clone() {
            let (idx, _) = row_in(p.s, i, &cols);
            if idx.is_empty() {
                continue;
            }
            // SAFETY: masked loads read only columns j0..j0 + width of row i of dY and of the
            // stored rows q < k of W; the write goes to a stored entry of this task's block.
            unsafe {
                let dy = p.dy.as_ptr().add(i * m + j0);
                let mut d = [_mm512_setzero_ps(); V];
                for (v, dv) in d.iter_mut().enumerate() {
                    *dv = _mm512_maskz_loadu_ps(lanes[v], dy.add(16 * v));
                }
                for &q in idx {
                    let w = p.w.as_ptr().add(q as usize * m + j0);
                    // Two chains of four: consecutive entries' chains are independent, so
                    // out-of-order execution overlaps them.
                    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                    for v in (0..V).step_by(2) {
                        a0 = _mm512_fmadd_ps(
                            d[v],
                            _mm512_maskz_loadu_ps(lanes[v], w.add(16 * v)),
                            a0,
                        );
                        a1 = _mm512_fmadd_ps(
                            d[v + 1],
                            _mm512_maskz_loadu_ps(lanes[v + 1], w.add(16 * v + 16)),
                            a1,
                        );
                    }
                    *p.out.0.add(i * k + q as usize) += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
                }
            }
        }
    }
}
