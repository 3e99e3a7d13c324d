//! The block-sparse kernels: each row block is a few dense products of its panel with the rows
//! of the dense operand at its active columns, one per run of adjacent active blocks.

use modula_sparse::{BlockSparse, Csr, Select};

use super::{Isa, check_product, check_sampled};
use crate::gemm::{MatMut, MatRef, Parallelism, gemm, gemm_bias};

/// Row blocks of at most this many rows (a batch of a few examples) run the CSR kernels on
/// their panel instead of a GEMM: the GEMM would pack the gathered rows of the dense operand,
/// a copy as long as the product itself for so few rows.
const FEW_ROWS: usize = 8;

/// A stretch of adjacent active column blocks of one row block: its first column, its width,
/// and where it starts in the row block's panel.
struct Run {
    col: usize,
    width: usize,
    offset: usize,
}

/// Row block `r`'s active blocks, adjacent ones merged into runs. Each run is one product with
/// contiguous rows of the dense operand, which the GEMM then reads in place (a gathered
/// operand would be packed, a copy as long as the product for a row block of 32 rows).
fn runs(s: &BlockSparse, r: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut offset = 0;
    for &c in s.active(r) {
        let col = c as usize * s.col_block();
        let width = s.col_block().min(s.cols() - col);
        match runs.last_mut() {
            Some(last) if last.col + last.width == col => last.width += width,
            _ => runs.push(Run { col, width, offset }),
        }
        offset += width;
    }
    runs
}

/// Row block `r`'s panel as a CSR matrix (explicit zeros included), for [`FEW_ROWS`].
fn panel_csr(s: &BlockSparse, r: usize) -> Csr {
    let rows = s.row_range(r).len();
    let cols = s.active_columns(r);
    let indptr = (0..=rows).map(|i| (i * cols.len()) as u32).collect();
    Csr::new(
        rows,
        s.cols(),
        indptr,
        cols.repeat(rows),
        s.panel(r).to_vec(),
    )
    .expect("a valid block matrix's panel is a valid CSR matrix")
}

/// Sets bit `j` of `bits` (ORs it in) for every element `j` of `row` that `select` keeps.
fn or_kept_bits(isa: Isa, row: &[f32], select: Select, bits: &mut [u64]) {
    match isa {
        // SAFETY: the callers checked that the CPU runs AVX-512F, and `bits` holds a bit for
        // every element of `row`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { super::avx512::or_kept_bits(row, select, bits) },
        _ => {
            for (j, &v) in row.iter().enumerate() {
                bits[j / 64] |= u64::from(select.keeps(v)) << (j % 64);
            }
        }
    }
}

/// Whether any bit in `range` of `bits` is set.
fn any_bit(bits: &[u64], range: std::ops::Range<usize>) -> bool {
    range.into_iter().any(|j| bits[j / 64] >> (j % 64) & 1 == 1)
}

/// The block-sparse form of the row-major `rows x cols` matrix `data` (the same matrix as
/// `BlockSparse::from_dense`): row blocks in parallel, each ORing the bitmaps of its rows' kept
/// entries (sixteen lanes per compare with AVX-512), reading the active blocks off the bitmap
/// and copying them.
///
/// # Panics
/// If `data.len() != rows * cols`, a block size is 0 or `isa` is unsupported.
#[allow(clippy::too_many_arguments)] // The matrix, the blocking, the rule and the resources.
#[track_caller]
pub fn sparsify_blocks(
    isa: Isa,
    data: &[f32],
    rows: usize,
    cols: usize,
    row_block: usize,
    col_block: usize,
    select: Select,
    par: Parallelism<'_>,
) -> BlockSparse {
    assert_eq!(
        data.len(),
        rows * cols,
        "sparsify_blocks: wrong data length"
    );
    assert!(
        row_block > 0 && col_block > 0,
        "sparsify_blocks: block sizes must be at least 1"
    );
    isa.assert_supported();
    select.validate();
    let col_blocks = cols.div_ceil(col_block);
    let span = |c: usize| c * col_block..((c + 1) * col_block).min(cols);
    let one = |r0: usize| -> (Vec<u32>, Vec<f32>) {
        let r1 = (r0 + row_block).min(rows);
        let mut bits = vec![0u64; cols.div_ceil(64)];
        for i in r0..r1 {
            or_kept_bits(isa, &data[i * cols..][..cols], select, &mut bits);
        }
        let active: Vec<u32> = (0..col_blocks)
            .filter(|&c| any_bit(&bits, span(c)))
            .map(|c| c as u32)
            .collect();
        let mut values = Vec::new();
        for i in r0..r1 {
            for &c in &active {
                values.extend(
                    data[i * cols..][span(c as usize)]
                        .iter()
                        .map(|&v| select.apply(v)),
                );
            }
        }
        (active, values)
    };
    let par = if data.len() >= super::PAR_MIN_ELEMS {
        par
    } else {
        Parallelism::Sequential
    };
    let parts = par.map((0..rows).step_by(row_block).collect(), &one);
    let mut block_ptr = vec![0u32];
    let (mut block_cols, mut values) = (Vec::new(), Vec::new());
    for (active, vals) in parts {
        block_cols.extend_from_slice(&active);
        values.extend_from_slice(&vals);
        block_ptr.push(block_cols.len() as u32);
    }
    BlockSparse::new(
        rows, cols, row_block, col_block, block_ptr, block_cols, values,
    )
    .expect("sparsify_blocks: too large for u32 indices")
}

/// How the row blocks of a product run: spread over the threads with a sequential GEMM each
/// when there are at least as many as threads and the product is worth splitting, else one
/// at a time with each block's rows split (or all on the caller for small products).
fn plan<'p>(s: &BlockSparse, m: usize, par: Parallelism<'p>) -> (bool, Parallelism<'p>) {
    let (active, threads) = (s.values().len(), par.tasks());
    let worth = threads > 1 && active.saturating_mul(m) >= super::PAR_MIN_MACS;
    let spread = worth && s.row_blocks() >= threads;
    let split = if worth && !spread {
        par
    } else {
        Parallelism::Sequential
    };
    (spread, split)
}

/// `C = S B + beta C + 1 bias^T` with a block-sparse `S` (`[n x k]`), `B` row-major `[k x m]`,
/// `C` row-major `[n x m]`. With `beta == 0`, `C` is not read.
///
/// # Panics
/// If the lengths do not match the shapes or `isa` is unsupported.
#[allow(clippy::too_many_arguments)] // The product's operands and options, as `gemm` takes them.
#[track_caller]
pub fn block_matmul(
    isa: Isa,
    s: &BlockSparse,
    b: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    beta: f32,
    c: &mut [f32],
    par: Parallelism<'_>,
) {
    let n = s.rows();
    check_product("block_matmul", s.shape(), b.len(), m, bias, c.len());
    if m == 0 || n == 0 {
        return;
    }
    isa.assert_supported();
    // Rows `lo..hi` of row block `r` (a few-row block always whole), into `c`, their rows of
    // C; the GEMMs run on the calling thread, the CSR kernels as `par` says.
    let one = |r: usize, lo: usize, hi: usize, c: &mut [f32], par: Parallelism<'_>| {
        let rows = hi - lo;
        if s.row_range(r).len() <= FEW_ROWS {
            super::csr_matmul(isa, &panel_csr(s, r), b, m, bias, beta, c, par);
            return;
        }
        let (panel, runs) = (s.panel(r), runs(s, r));
        let width = runs.last().map_or(0, |run| run.offset + run.width);
        let seq = Parallelism::Sequential;
        // The first run's product applies beta (and the bias); later runs accumulate. Without
        // active blocks an empty product still applies them.
        let first_beta = |c: &mut [f32], a: MatRef<'_>, bv: MatRef<'_>| match bias {
            Some(bias) if beta == 0.0 => {
                gemm_bias(1.0, a, bv, bias, MatMut::row_major(c, rows, m), seq)
            }
            _ => {
                gemm(1.0, a, bv, beta, MatMut::row_major(c, rows, m), seq);
                if let Some(bias) = bias {
                    for row in c.chunks_exact_mut(m) {
                        row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
                    }
                }
            }
        };
        if runs.is_empty() {
            first_beta(
                c,
                MatRef::row_major(&[], rows, 0),
                MatRef::row_major(b, 0, m),
            );
        }
        for (t, run) in runs.iter().enumerate() {
            let a = MatRef::new(&panel[lo * width + run.offset..], rows, run.width, width, 1);
            let bv = MatRef::row_major(&b[run.col * m..], run.width, m);
            if t == 0 {
                first_beta(c, a, bv);
            } else {
                gemm(1.0, a, bv, 1.0, MatMut::row_major(c, rows, m), seq);
            }
        }
    };
    for_row_blocks(s, m, m, par, c, &one);
}

/// The work on rows `lo..hi` of row block `r`: `(r, lo, hi, their rows of the output, how
/// its own kernels may split)`.
type RowsTask<'a> = dyn Fn(usize, usize, usize, &mut [f32], Parallelism<'_>) + Sync + 'a;

/// Runs `one(r, lo, hi, rows, par)` over every row block `r` of `s`, where `rows` is the
/// part of `out` (`width` values per row) that rows `lo..hi` of the block own: row blocks
/// spread over the threads when there are enough of them and the product (`m` columns of
/// output per stored value) is worth splitting; else each row block's rows are split across
/// the threads (the per-run GEMMs are too small for the GEMM's own split), except few-row
/// blocks, whose CSR kernels split their work themselves.
fn for_row_blocks(
    s: &BlockSparse,
    m: usize,
    width: usize,
    par: Parallelism<'_>,
    out: &mut [f32],
    one: &RowsTask<'_>,
) {
    let chunk = s.row_block() * width;
    let seq = Parallelism::Sequential;
    let (spread, split) = plan(s, m, par);
    if spread {
        let blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(chunk).enumerate().collect();
        par.for_each(blocks, &|(r, o): (usize, &mut [f32])| {
            one(r, 0, s.row_range(r).len(), o, seq)
        });
        return;
    }
    for (r, o) in out.chunks_mut(chunk).enumerate() {
        let rows = s.row_range(r).len();
        let tasks = split.tasks().min(rows);
        if tasks <= 1 || rows <= FEW_ROWS {
            one(r, 0, rows, o, if tasks <= 1 { seq } else { split });
            continue;
        }
        let per = rows.div_ceil(tasks);
        let parts: Vec<(usize, &mut [f32])> = o.chunks_mut(per * width).enumerate().collect();
        split.for_each(parts, &|(i, o): (usize, &mut [f32])| {
            one(r, i * per, ((i + 1) * per).min(rows), o, seq)
        });
    }
}

/// `out[i * k + j] = (dY W^T)[i, j]` for every `(i, j)` inside an active block of `S`
/// (`[n x k]`), with `dY` `[n x m]` and `W` `[k x m]` row-major; other elements of `out` are
/// left as they are (the caller passes zeros). One GEMM per row block, `dY`'s rows times the
/// transposed rows of `W` at the active columns.
///
/// # Panics
/// If the lengths do not match the shapes.
#[track_caller]
pub fn block_sampled_matmul_t(
    isa: Isa,
    s: &BlockSparse,
    dy: &[f32],
    w: &[f32],
    m: usize,
    out: &mut [f32],
    par: Parallelism<'_>,
) {
    let (n, k) = (s.rows(), s.cols());
    check_sampled(
        "block_sampled_matmul_t",
        s.shape(),
        dy.len(),
        w.len(),
        m,
        out.len(),
    );
    if n == 0 || k == 0 {
        return;
    }
    isa.assert_supported();
    let one = |r: usize, lo: usize, hi: usize, out: &mut [f32], par: Parallelism<'_>| {
        let rows = s.row_range(r);
        if s.active(r).is_empty() {
            return;
        }
        if rows.len() <= FEW_ROWS {
            let dy_rows = &dy[rows.start * m..rows.end * m];
            super::sampled_matmul_t(isa, &panel_csr(s, r), dy_rows, w, m, out, par);
            return;
        }
        let (first, last) = (rows.start + lo, rows.start + hi);
        let dy_rows = MatRef::row_major(&dy[first * m..last * m], hi - lo, m);
        // Each run's block of the output is written in place: `dY` times the transposed
        // rows of `W` it covers.
        for run in runs(s, r) {
            let wt = MatRef::row_major(&w[run.col * m..], run.width, m).t();
            let o = MatMut::new(&mut out[run.col..], hi - lo, run.width, k);
            gemm(1.0, dy_rows, wt, 0.0, o, Parallelism::Sequential);
        }
    };
    for_row_blocks(s, m, k, par, out, &one);
}
