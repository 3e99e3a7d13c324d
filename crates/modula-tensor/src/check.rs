//! Contract checks shared by every backend, so that all of them panic alike on misuse.

use crate::backend::Shape;
use crate::ops::Transpose;

/// Panics unless `a == b`, naming the operation.
#[track_caller]
pub fn same_shape(op: &str, a: Shape, b: Shape) {
    assert!(a == b, "{op}: shape mismatch {a:?} vs {b:?}");
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
