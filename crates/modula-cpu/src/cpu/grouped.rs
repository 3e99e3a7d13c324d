//! The CPU backend's routed-layer kernels: grouped GEMM, segmented gather-sum and indexed
//! row add.
//!
//! A routed mini-batch is sorted by module so that each module's rows form one contiguous
//! block. Each block is then one GEMM against that module's weights. Blocks are parallelised
//! in one of two ways: whole blocks spread across threads with a sequential GEMM each, unless
//! one block alone is more than a thread's share of the rows, in which case the blocks run one
//! at a time with each GEMM split across threads.

use ndarray::Array2;

use modula_tensor::GroupedOp;

use super::{Cpu, fill_row, slice, slice_mut, write_row};
use crate::gemm::{MatMut, MatRef, Parallelism, gemm, gemm_bias};

/// Splits `data` into consecutive pieces of `sizes[i] * width` elements.
fn split_blocks<T>(
    mut data: &mut [T],
    sizes: impl Iterator<Item = usize>,
    width: usize,
) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    for rows in sizes {
        let (head, tail) = data.split_at_mut(rows * width);
        out.push(head);
        data = tail;
    }
    out
}

/// `GroupedKernels::grouped_matmul` (`rows == None`) and `GroupedKernels::grouped_matmul_rows`: with
/// `rows`, each group's rows of the row-segmented inputs are read through the index by the
/// GEMM's packing (or its few-row path), which saves writing a gathered copy and reading it
/// back.
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
    let groups = offsets.len() - 1;
    let (d_in, d_out) = op.block_dims(b.dim().into(), c.dim().into(), groups);
    let width = c.ncols();
    let sizes = (0..groups).map(|g| match op {
        GroupedOp::XW | GroupedOp::XWt => (offsets[g + 1] - offsets[g]) as usize,
        GroupedOp::XtY => d_in,
    });
    let sizes: Vec<usize> = sizes.collect();
    let blocks = split_blocks(slice_mut(c), sizes.iter().copied(), width)
        .into_iter()
        .zip(&sizes)
        .map(|(block, &rows)| MatMut::row_major(block, rows, width))
        .collect();
    let job = Job {
        op,
        a: slice(a),
        b: slice(b),
        rows,
        offsets,
        d_in,
        d_out,
        beta,
        bias: None,
    };
    job.run(cpu, blocks);
}

/// `GroupedKernels::grouped_product_rows`: the per-pair products in a new tensor, each element
/// written once (the GEMM stores the bias with the product into uninitialised memory).
pub(crate) fn grouped_product(
    cpu: &Cpu,
    op: GroupedOp,
    a: &Array2<f32>,
    b: &Array2<f32>,
    rows: &[u32],
    offsets: &[u32],
    bias: Option<&Array2<f32>>,
) -> Array2<f32> {
    let groups = offsets.len() - 1;
    let (d_in, d_out) = op.block_dims(b.dim().into(), [0, 0], groups);
    let width = if op == GroupedOp::XW { d_out } else { d_in };
    // Not a contract check (the front ran those): the soundness of `assume_init` below rests
    // on the groups tiling every output row, so this kernel asserts it itself, for callers
    // that reach it without the front.
    assert!(
        offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets
                .last()
                .is_some_and(|&end| end as usize == rows.len()),
        "grouped_product_rows: the group offsets must tile the {} routed rows",
        rows.len()
    );
    let mut out = Array2::<f32>::uninit((rows.len(), width));
    let data = out
        .as_slice_mut()
        .expect("a new array is in standard layout");
    let sizes: Vec<usize> = (0..groups)
        .map(|g| (offsets[g + 1] - offsets[g]) as usize)
        .collect();
    let blocks = split_blocks(data, sizes.iter().copied(), width)
        .into_iter()
        .zip(&sizes)
        .map(|(block, &rows)| MatMut::uninit(block, rows, width, width))
        .collect();
    let job = Job {
        op,
        a: slice(a),
        b: slice(b),
        rows: Some(rows),
        offsets,
        d_in,
        d_out,
        beta: 0.0,
        bias: bias.map(slice),
    };
    job.run(cpu, blocks);
    // SAFETY: the groups' blocks tile all of `out` (offsets run from 0 to rows.len()), and a
    // product with beta == 0 writes every element of its block (`gemm` and `gemm_bias`
    // write C entirely for any non-empty shape, zeros or the bias for an empty inner
    // dimension).
    unsafe { out.assume_init() }
}

/// One grouped product: group `g` multiplies its rows of the row-segmented inputs with block
/// `g` of the stacked operand into its block of the output.
struct Job<'a> {
    op: GroupedOp,
    a: &'a [f32],
    b: &'a [f32],
    rows: Option<&'a [u32]>,
    offsets: &'a [u32],
    d_in: usize,
    d_out: usize,
    beta: f32,
    /// Per-group bias rows `[G, d_out]` for `XW` (then `beta == 0`).
    bias: Option<&'a [f32]>,
}

impl Job<'_> {
    /// Group `g`'s first row and row count.
    fn seg(&self, g: usize) -> (usize, usize) {
        let o = self.offsets;
        (o[g] as usize, (o[g + 1] - o[g]) as usize)
    }

    /// Computes group `g` into `c_g`.
    fn group(&self, g: usize, c_g: MatMut<'_>, par: Parallelism) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let (start, len) = self.seg(g);
        let block = d_in * d_out;
        let segment = |data, cols| segment(data, self.rows, start, len, cols);
        let w_g = || MatRef::row_major(&self.b[g * block..(g + 1) * block], d_in, d_out);
        match self.op {
            GroupedOp::XW => {
                let x_g = segment(self.a, d_in);
                match self.bias {
                    Some(bias) => {
                        let bias_g = &bias[g * d_out..(g + 1) * d_out];
                        gemm_bias(1.0, x_g, w_g(), bias_g, c_g, par);
                    }
                    None => gemm(1.0, x_g, w_g(), self.beta, c_g, par),
                }
            }
            GroupedOp::XWt => gemm(1.0, segment(self.a, d_out), w_g().t(), self.beta, c_g, par),
            GroupedOp::XtY => {
                let (x_g, dy_g) = (segment(self.a, d_in), segment(self.b, d_out));
                gemm(1.0, x_g.t(), dy_g, self.beta, c_g, par);
            }
        }
    }

    /// Computes every group, block `g` of `blocks` being group `g`'s output.
    fn run(&self, cpu: &Cpu, blocks: Vec<MatMut<'_>>) {
        let groups = blocks.len();
        let threads = cpu.threads();
        let total_rows = *self.offsets.last().expect("checked non-empty") as usize;
        let largest = (0..groups).map(|g| self.seg(g).1).max().unwrap_or(0);
        // Whole groups per thread need no synchronisation inside a GEMM and pack each operand
        // once, and each thread keeps one module's weights in its own L2: measured with the
        // modular bench's paired ratios (16 modules of 512 rows, 2 threads), 0.82 of the dense
        // GEMM's speed against 0.76 with every GEMM split across the threads. That holds while
        // the groups can be shared out evenly; a group larger than one thread's share of the
        // rows (a collapsed routing, or few modules) would leave the other threads idle, so
        // then each GEMM is split.
        if threads == 1 || largest * threads > total_rows {
            for (g, c_g) in blocks.into_iter().enumerate() {
                self.group(g, c_g, Parallelism::Team(cpu.team()));
            }
        } else {
            // Each thread takes the next group from the team's shared queue when it finishes
            // one, so groups of unequal size still share out evenly.
            let groups: Vec<(usize, MatMut<'_>)> = blocks.into_iter().enumerate().collect();
            Parallelism::Team(cpu.team()).for_each(groups, &|(g, c_g)| {
                self.group(g, c_g, Parallelism::Sequential)
            });
        }
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

pub(crate) fn segment_sum_rows(
    cpu: &Cpu,
    src: &Array2<f32>,
    pos: &[u32],
    ptr: &[u32],
) -> Array2<f32> {
    let n = ptr.len() - 1;
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

pub(crate) fn add_gathered_rows(
    cpu: &Cpu,
    dst: &mut Array2<f32>,
    table: &Array2<f32>,
    idx: &[u32],
) {
    let cols = dst.ncols();
    let t = slice(table);
    cpu.for_rows(dst, |i, row| {
        let from = &t[idx[i] as usize * cols..(idx[i] as usize + 1) * cols];
        row.iter_mut().zip(from).for_each(|(o, v)| *o += v);
    });
}
