//! The blocked loop nest of the GEMM (BLIS order) over one rectangle of `C`, and [`run`],
//! which splits `C` into rectangles, one per task.

use super::Parallelism;
use super::kernel::{Kernel, MR, NR, Tile};
use super::pack::{PackedRhs, pack_a_strip, with_a_buffer};
use super::view::{MatMut, MatRef};
use super::{KC, MC, NC};

/// Where the microkernel reads `op(B)` from.
#[derive(Clone, Copy)]
pub(super) enum Rhs<'r, 'a> {
    /// Packed strips.
    Packed(&'r PackedRhs),
    /// In place: `op(B)` has unit column stride, rows `row_stride` apart.
    Direct(MatRef<'a>),
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
/// otherwise along columns) and computes each one, split across threads by `par` when
/// `tasks > 1`.
#[allow(clippy::too_many_arguments)] // The product's operands, as `gemm` takes them.
pub(super) fn run(
    alpha: f32,
    a: MatRef<'_>,
    b: Rhs<'_, '_>,
    beta: f32,
    bias: Option<&[f32]>,
    c: MatMut<'_>,
    tasks: usize,
    par: Parallelism<'_>,
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
    par.for_each(parts, &|part| compute_part(kern, &a, b, &store, &part));
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
