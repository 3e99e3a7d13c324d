//! Contract checks of every [`crate::Backend`] operation, so that all backends panic alike on
//! misuse.
//!
//! The [`crate::Backend`] front runs them once, before it hands an operation to a backend's
//! [`crate::Kernels`]; no backend calls them itself. They are public for extension traits
//! outside this crate that put the same kind of front on their own operations. Each panics
//! with the operation's name and the offending shapes or indices.

use crate::ops::{Shape, Transpose, Window2d};

/// Panics unless `a == b`, naming the operation.
#[track_caller]
pub fn same_shape(op: &str, a: Shape, b: Shape) {
    assert!(a == b, "{op}: shape mismatch {a:?} vs {b:?}");
}

/// Panics unless `len`, the length of a per-row list (targets, columns, indices), equals the
/// `rows` of the tensor it goes with.
#[track_caller]
pub fn one_per_row(op: &str, what: &str, len: usize, rows: usize) {
    assert!(
        len == rows,
        "{op}: one {what} per row: {len} for {rows} rows"
    );
}

/// Panics unless two tensors have the same number of rows.
#[track_caller]
pub fn same_rows(op: &str, a: Shape, b: Shape) {
    assert!(a[0] == b[0], "{op}: row counts differ: {a:?} vs {b:?}");
}

/// Panics unless two tensors have the same number of columns.
#[track_caller]
pub fn same_cols(op: &str, a: Shape, b: Shape) {
    assert!(a[1] == b[1], "{op}: column counts differ: {a:?} vs {b:?}");
}

/// Panics unless `x` holds NHWC images for `window` (`[n, window.in_len()]`).
#[track_caller]
pub fn images(op: &str, x: Shape, window: &Window2d) {
    same_shape(op, [x[0], window.in_len()], x);
}

/// Panics unless `cols` holds whole images' patches for `window`
/// (`[n * OH * OW, window.patch_len()]`).
#[track_caller]
pub fn patches(op: &str, cols: Shape, window: &Window2d) {
    let pixels = window.out_height() * window.out_width();
    assert!(
        cols[1] == window.patch_len() && cols[0].is_multiple_of(pixels),
        "{op}: patches {cols:?} do not match window {window:?}"
    );
}

/// Panics unless `window` is a pooling window (no padding).
#[track_caller]
pub fn pooling(op: &str, window: &Window2d) {
    assert!(window.padding == 0, "{op}: padding is not supported");
}

/// Panics unless `data_len` matches the shape.
#[track_caller]
pub fn data_len(shape: Shape, data_len: usize) {
    assert!(
        shape[0] * shape[1] == data_len,
        "upload: shape {shape:?} needs {} values, got {data_len}",
        shape[0] * shape[1]
    );
}

/// Validates a matmul and returns `(m, k, n)` of `op(A)[m,k] * op(B)[k,n]`.
#[track_caller]
pub fn matmul(a: Shape, ta: Transpose, b: Shape, tb: Transpose, c: Shape) -> (usize, usize, usize) {
    let [m, k] = ta.apply(a);
    let [k2, n] = tb.apply(b);
    assert!(
        k == k2,
        "matmul: inner dimensions differ: op(A) is {m}x{k}, op(B) is {k2}x{n}"
    );
    assert!(c == [m, n], "matmul: C is {c:?}, expected [{m}, {n}]");
    (m, k, n)
}

/// Panics if any index is `>= bound`.
#[track_caller]
pub fn indices(op: &str, idx: &[u32], bound: usize) {
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= bound) {
        panic!("{op}: index {bad} out of range for {bound} rows/columns");
    }
}

/// Panics unless a column block lies inside a tensor with `cols` columns.
#[track_caller]
pub fn col_range(op: &str, start: usize, width: usize, cols: usize) {
    assert!(
        start.checked_add(width).is_some_and(|end| end <= cols),
        "{op}: columns {start}..{} exceed {cols}",
        start.saturating_add(width)
    );
}

/// Validates group offsets over `rows` segmented rows and returns the group count.
#[track_caller]
pub fn offsets(op: &str, offsets: &[u32], rows: usize) -> usize {
    assert!(
        !offsets.is_empty(),
        "{op}: offsets must hold at least one entry"
    );
    assert!(
        offsets[0] == 0,
        "{op}: offsets must start at 0, got {}",
        offsets[0]
    );
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "{op}: offsets must be non-decreasing"
    );
    assert!(
        *offsets.last().expect("non-empty") as usize == rows,
        "{op}: offsets end at {}, but the segmented operand has {rows} rows",
        offsets.last().expect("non-empty")
    );
    offsets.len() - 1
}

/// Validates a grouped matmul that reads its row-segmented inputs through `rows` (see
/// [`crate::Backend::grouped_matmul_rows`]) and returns `(groups, d_in, d_out)`.
#[track_caller]
pub fn grouped_rows(
    op: crate::ops::GroupedOp,
    a: Shape,
    b: Shape,
    rows: &[u32],
    offsets: &[u32],
    c: Shape,
) -> (usize, usize, usize) {
    use crate::ops::GroupedOp::*;
    indices("grouped_matmul_rows", rows, a[0]);
    let b_seen = match op {
        XW | XWt => b,
        XtY => {
            indices("grouped_matmul_rows", rows, b[0]);
            [rows.len(), b[1]]
        }
    };
    grouped(op, [rows.len(), a[1]], b_seen, offsets, c)
}

/// Validates a grouped product into a new tensor (see
/// [`crate::Backend::grouped_product_rows`]) and returns `(groups, d_in, d_out)`.
#[track_caller]
pub fn grouped_product(
    op: crate::ops::GroupedOp,
    a: Shape,
    b: Shape,
    rows: &[u32],
    offsets_: &[u32],
    bias: Option<Shape>,
) -> (usize, usize, usize) {
    use crate::ops::GroupedOp::*;
    assert!(
        op != XtY,
        "grouped_product_rows: XtY accumulates into a gradient; use grouped_matmul_rows"
    );
    let g = offsets("grouped_product_rows", offsets_, rows.len());
    assert!(
        g > 0 && b[0].is_multiple_of(g),
        "grouped_product_rows: stacked operand {b:?} is not {g} equal blocks"
    );
    let (d_in, d_out) = (b[0] / g, b[1]);
    let c = match op {
        XW => [rows.len(), d_out],
        _ => [rows.len(), d_in],
    };
    let dims = grouped_rows(op, a, b, rows, offsets_, c);
    match (op, bias) {
        (_, None) => {}
        (XW, Some(shape)) => assert!(
            shape == [g, d_out],
            "grouped_product_rows: bias is {shape:?}, expected [{g}, {d_out}]"
        ),
        (_, Some(_)) => panic!("grouped_product_rows: only XW takes a bias"),
    }
    dims
}

/// Validates a grouped matmul and returns `(groups, d_in, d_out)`.
#[track_caller]
pub fn grouped(
    op: crate::ops::GroupedOp,
    a: Shape,
    b: Shape,
    offsets_: &[u32],
    c: Shape,
) -> (usize, usize, usize) {
    use crate::ops::GroupedOp::*;
    let (seg_rows, stacked) = match op {
        XW | XWt => (a[0], b),
        XtY => (a[0], c),
    };
    let g = offsets("grouped_matmul", offsets_, seg_rows);
    assert!(
        g > 0 && stacked[0] % g == 0,
        "grouped_matmul: stacked operand {stacked:?} is not {g} equal blocks"
    );
    let (d_in, d_out) = (stacked[0] / g, stacked[1]);
    let (want_a, want_b, want_c) = match op {
        XW => ([seg_rows, d_in], [g * d_in, d_out], [seg_rows, d_out]),
        XWt => ([seg_rows, d_out], [g * d_in, d_out], [seg_rows, d_in]),
        XtY => ([seg_rows, d_in], [seg_rows, d_out], [g * d_in, d_out]),
    };
    assert!(
        a == want_a && b == want_b && c == want_c,
        "grouped_matmul {op:?}: got a {a:?}, b {b:?}, c {c:?}; expected {want_a:?}, {want_b:?}, {want_c:?}"
    );
    (g, d_in, d_out)
}
