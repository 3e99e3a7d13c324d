//! Plain-Rust forms of the sparse kernels: the same loop structure as the AVX-512 ones, on
//! fixed-size arrays that the compiler vectorises for whatever the target offers.

use std::mem::MaybeUninit;
use std::ops::Range;

use modula_sparse::Select;

use super::{BPanel, Init, PANEL, RowsPanel, Sampled, next_part, row_in};

/// Writes the kept entries of `row` (their columns and values) to the front of `idx` and
/// `val` and returns how many. Branch-free: every element is written at the next free slot,
/// which advances only when the element is kept, so `idx` and `val` need one slot of slack.
pub(super) fn compress_row(
    row: &[f32],
    select: Select,
    idx: &mut [MaybeUninit<u32>],
    val: &mut [MaybeUninit<f32>],
) -> usize {
    let mut n = 0;
    for (j, &v) in row.iter().enumerate() {
        idx[n].write(j as u32);
        val[n].write(v);
        n += usize::from(select.keeps(v));
    }
    n
}

/// Rows `rows` x columns `j0..j0 + width` (one panel, `width <= PANEL`) of
/// `C = S B + beta C + 1 bias^T`, reading `B`'s columns from `panel` and only the stored
/// entries whose column lies in `depth` (as the AVX-512 form: a `depth` from 0 starts from
/// `beta C + bias`, a later one adds to `C`).
///
/// # Safety
/// `p.c` addresses the `n x m` output, which no other thread writes in this block.
pub(super) unsafe fn csr_rows(
    p: &RowsPanel<'_>,
    rows: Range<usize>,
    j0: usize,
    width: usize,
    depth: Range<usize>,
    cursor: &mut [u32],
    panel: &BPanel<'_>,
) {
    let m = p.m;
    let init = Init::of(&depth);
    for (i, at) in rows.zip(cursor) {
        let (idx, vals) = next_part(p.s, i, at, depth.end);
        if idx.is_empty() && matches!(init, Init::Continue) {
            // Nothing to add to what an earlier slice left in C.
            continue;
        }
        // SAFETY: row i's columns j0..j0 + width lie inside C and belong to this task.
        let out = unsafe { std::slice::from_raw_parts_mut(p.c.0.add(i * m + j0), width) };
        let mut acc = [0.0f32; PANEL];
        let acc = &mut acc[..width];
        match init {
            Init::Continue => acc.copy_from_slice(out),
            Init::Start => {
                if p.beta != 0.0 {
                    acc.iter_mut()
                        .zip(&*out)
                        .for_each(|(a, &c)| *a = p.beta * c);
                }
                if let Some(bias) = p.bias {
                    acc.iter_mut().zip(&bias[j0..]).for_each(|(a, &b)| *a += b);
                }
            }
        }
        for (&q, &v) in idx.iter().zip(vals) {
            let b = &panel.b[q as usize * panel.ld..][..width];
            acc.iter_mut().zip(b).for_each(|(a, &b)| *a += v * b);
        }
        out.copy_from_slice(acc);
    }
}

/// The stored entries of rows `rows` with columns in `cols` of `(dY W^T)`, written to
/// `p.out`, a panel of [`PANEL`] columns of `dY` at a time.
///
/// # Safety
/// `p.out` addresses the `n x k` output, whose entries at these stored positions no other
/// thread writes.
pub(super) unsafe fn sampled_rows(p: &Sampled<'_>, rows: Range<usize>, cols: Range<usize>) {
    let (m, k) = (p.m, p.s.cols());
    for j0 in (0..m).step_by(PANEL) {
        let width = PANEL.min(m - j0);
        for i in rows.clone() {
            let dy = &p.dy[i * m + j0..][..width];
            let (idx, _) = row_in(p.s, i, &cols);
            for &q in idx {
                let w = &p.w[q as usize * m + j0..][..width];
                let dot: f32 = dy.iter().zip(w).map(|(&a, &b)| a * b).sum();
                // SAFETY: (i, q) is a stored entry of this task's block, inside `out`.
                unsafe { *p.out.0.add(i * k + q as usize) += dot };
            }
        }
    }
}
