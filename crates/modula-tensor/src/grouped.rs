//! The CPU backend's routed-layer kernels: grouped GEMM, segmented gather-sum and indexed
//! row add.
//!
//! A routed mini-batch is sorted by module so that each module's rows form one contiguous
//! block. Each block is then one GEMM against that module's weights. Blocks are parallelised
//! in one of two ways: whole blocks spread across threads with a sequential GEMM each, unless
//! one block alone is more than a thread's share of the rows, in which case the blocks run one
//! at a time with each GEMM split across threads.

use ndarray::Array2;
use rayon::prelude::*;

use crate::check;
use crate::cpu::{Cpu, fill_row, slice, slice_mut, write_row};
use crate::gemm::{MatMut, MatRef, Parallelism, gemm};
use crate::ops::GroupedOp;

/// Splits `data` into consecutive pieces of `sizes[i] * width` elements.
fn split_blocks(
    mut data: &mut [f32],
    sizes: impl Iterator<Item = usize>,
    width: usize,
) -> Vec<&mut [f32]> {
    let mut out = Vec::new();
    for rows in sizes {
        let (head, tail) = data.split_at_mut(rows * width);
        out.push(head);
        data = tail;
    }
    out
}

/// `Backend::grouped_matmul` (`rows == None`) and `Backend::grouped_matmul_rows`: with
/// `rows`, each group's rows of the row-segmented inputs are read through the index by the
/// GEMM's packing (or its few-row path), which saves writing a gathered copy and reading it
/// back.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub(crate) fn grouped_matmul(
    cpu: &Cpu,
    op: GroupedOp,
    a: &Array2<f32>,
    b: &Array2<f32>,
    rows: Option<&[u32]>,
    offsets: &[u32],
    beta: f32,
    c: &mut Array2<f32>,
) {
    let (groups, d_in, d_out) = match rows {
        None => check::grouped(op, a.dim().into(), b.dim().into(), offsets, c.dim().into()),
        Some(rows) => check::grouped_rows(
            op,
            a.dim().into(),
            b.dim().into(),
            rows,
            offsets,
            c.dim().into(),
        ),
    };
    let seg = |g: usize| (offsets[g] as usize, (offsets[g + 1] - offsets[g]) as usize);
    // Rows start..start + len of a row-segmented input with `cols` columns.
    let segment = |data, start, len, cols| segment(data, rows, start, len, cols);
    let (a, b) = (slice(a), slice(b));
    let c_width = match op {
        GroupedOp::XW => d_out,
        GroupedOp::XWt => d_in,
        GroupedOp::XtY => d_out,
    };
    let blocks = match op {
        GroupedOp::XW | GroupedOp::XWt => {
            split_blocks(slice_mut(c), (0..groups).map(|g| seg(g).1), c_width)
        }
        GroupedOp::XtY => split_blocks(slice_mut(c), (0..groups).map(|_| d_in), c_width),
    };
    let block = d_in * d_out;
    let run = |g: usize, c_g: &mut [f32], par: Parallelism| {
        let (start, rows) = seg(g);
        let w_g = || MatRef::row_major(&b[g * block..(g + 1) * block], d_in, d_out);
        match op {
            GroupedOp::XW => {
                let x_g = segment(a, start, rows, d_in);
                gemm(
                    1.0,
                    x_g,
                    w_g(),
                    beta,
                    MatMut::row_major(c_g, rows, d_out),
                    par,
                );
            }
            GroupedOp::XWt => {
                let dy_g = segment(a, start, rows, d_out);
                gemm(
                    1.0,
                    dy_g,
                    w_g().t(),
                    beta,
                    MatMut::row_major(c_g, rows, d_in),
                    par,
                );
            }
            GroupedOp::XtY => {
                let x_g = segment(a, start, rows, d_in);
                let dy_g = segment(b, start, rows, d_out);
                gemm(
                    1.0,
                    x_g.t(),
                    dy_g,
                    beta,
                    MatMut::row_major(c_g, d_in, d_out),
                    par,
                );
            }
        }
    };
    let threads = cpu.threads();
    let total_rows = *offsets.last().expect("checked non-empty") as usize;
    let largest = (0..groups).map(|g| seg(g).1).max().unwrap_or(0);
    // Whole groups per thread need no synchronisation inside a GEMM and pack each operand once,
    // and each thread keeps one module's weights in its own L2: measured with the modular
    // bench's paired ratios (16 modules of 512 rows, 2 threads), 0.82 of the dense GEMM's speed
    // against 0.76 with every GEMM split across the threads. That holds while the groups can be
    // shared out evenly; a group larger than one thread's share of the rows (a collapsed
    // routing, or few modules) would leave the other threads idle, so then each GEMM is split.
    if threads == 1 || largest * threads > total_rows {
        cpu.install(|| {
            for (g, c_g) in blocks.into_iter().enumerate() {
                run(g, c_g, Parallelism::Rayon(threads));
            }
        });
    } else {
        cpu.install(|| {
            blocks
                .into_par_iter()
                .enumerate()
                .with_max_len(1)
                .for_each(|(g, c_g)| run(g, c_g, Parallelism::Sequential));
        });
    }
}

/// Rows `start..start + len` of a row-segmented input with `cols` columns: a contiguous block,
/// or those entries of `rows` read through the index.
fn segment<'a>(
    data: &'a [f32],
    rows: Option<&'a [u32]>,
    start: usize,
    len: usize,
    cols: usize,
) -> MatRef<'a> {
    match rows {
        None => MatRef::row_major(&data[start * cols..(start + len) * cols], len, cols),
        Some(rows) => MatRef::gathered_rows(data, &rows[start..start + len], cols),
    }
}

#[track_caller]
pub(crate) fn segment_sum_rows(
    cpu: &Cpu,
    src: &Array2<f32>,
    pos: &[u32],
    ptr: &[u32],
) -> Array2<f32> {
    let n = check::offsets("segment_sum_rows", ptr, pos.len());
    check::indices("segment_sum_rows", pos, src.nrows());
    let cols = src.ncols();
    let s = slice(src);
    let from = |p: u32| &s[p as usize * cols..(p as usize + 1) * cols];
    // Each row starts as a copy of its first source row rather than as zeros, which saves a
    // pass over the output.
    cpu.rows_from(n, cols, |i, row| {
        let Some((&first, rest)) = pos[ptr[i] as usize..ptr[i + 1] as usize].split_first() else {
            return fill_row(row, 0.0);
        };
        let row = write_row(row, from(first));
        for &p in rest {
            row.iter_mut().zip(from(p)).for_each(|(o, v)| *o += v);
        }
        row
    })
}

#[track_caller]
pub(crate) fn add_gathered_rows(
    cpu: &Cpu,
    dst: &mut Array2<f32>,
    table: &Array2<f32>,
    idx: &[u32],
) {
    assert_eq!(
        idx.len(),
        dst.nrows(),
        "add_gathered_rows: one index per row"
    );
    assert_eq!(
        table.ncols(),
        dst.ncols(),
        "add_gathered_rows: column counts differ"
    );
    check::indices("add_gathered_rows", idx, table.nrows());
    let cols = dst.ncols();
    let t = slice(table);
    cpu.for_rows(dst, |i, row| {
        let from = &t[idx[i] as usize * cols..(idx[i] as usize + 1) * cols];
        row.iter_mut().zip(from).for_each(|(o, v)| *o += v);
    });
}
