//! The formats: building from dense, densifying, transposing and converting to and from sprs
//! are exact; malformed parts are refused with typed errors.

use modula_sparse::{BlockSparse, Csr, Select, SparseError};
use proptest::prelude::*;

/// A `rows x cols` matrix with exact zeros (a fraction `zeros` of its entries) and other
/// values, negatives included.
fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (0usize..12, 0usize..40, 0.0f64..=1.0).prop_flat_map(|(rows, cols, zeros)| {
        let entry = prop_oneof![
            ((zeros * 100.0) as u32).max(1) => Just(0.0f32),
            ((100.0 - zeros * 100.0) as u32).max(1) => -4.0f32..4.0,
        ];
        (
            Just(rows),
            Just(cols),
            proptest::collection::vec(entry, rows * cols),
        )
    })
}

fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; data.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = data[i * cols + j];
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn csr_round_trips_are_exact((rows, cols, data) in matrix(), threshold in 0.0f32..2.0) {
        let s = Csr::from_dense(rows, cols, &data, Select::NONZERO);
        prop_assert_eq!(s.to_dense(), data.clone());
        prop_assert_eq!(s.nnz(), data.iter().filter(|&&v| v != 0.0).count());
        prop_assert_eq!(Csr::from_sprs(&s.to_sprs()).unwrap(), s.clone());
        // sprs's own view of it is the same matrix.
        let dense = s.to_sprs().to_dense();
        prop_assert_eq!(dense.iter().copied().collect::<Vec<f32>>(), data.clone());
        // A CSC matrix converts to the same CSR.
        prop_assert_eq!(Csr::from_sprs(&s.to_sprs().to_csc()).unwrap(), s.clone());
        prop_assert_eq!(s.transpose().to_dense(), transposed(&data, rows, cols));
        prop_assert_eq!(s.transpose().transpose(), s.clone());
        let rebuilt = Csr::new(rows, cols, s.indptr().to_vec(), s.indices().to_vec(), s.values().to_vec());
        prop_assert_eq!(rebuilt.unwrap(), s);
        // A threshold keeps exactly the entries above it in magnitude; ReLU the positive ones.
        let t = Csr::from_dense(rows, cols, &data, Select::Magnitude(threshold)).to_dense();
        let want: Vec<f32> = data.iter().map(|&v| if v.abs() > threshold { v } else { 0.0 }).collect();
        prop_assert_eq!(t, want);
        let r = Csr::from_dense(rows, cols, &data, Select::Relu).to_dense();
        prop_assert_eq!(r, data.iter().map(|&v| v.max(0.0)).collect::<Vec<f32>>());
    }

    #[test]
    fn block_round_trips_are_exact(
        (rows, cols, data) in matrix(),
        row_block in 1usize..6,
        col_block in 1usize..9,
    ) {
        let s = BlockSparse::from_dense(rows, cols, &data, row_block, col_block, Select::NONZERO);
        prop_assert_eq!(s.to_dense(), data.clone());
        let t = s.transpose();
        prop_assert_eq!(t.to_dense(), transposed(&data, rows, cols));
        prop_assert_eq!(t.transpose(), s.clone());
        // A block is active exactly when it holds a non-zero.
        for r in 0..s.row_blocks() {
            for c in 0..s.col_blocks() {
                let nonzero = s.row_range(r).any(|i| {
                    (c * col_block..((c + 1) * col_block).min(cols)).any(|j| data[i * cols + j] != 0.0)
                });
                prop_assert_eq!(s.active(r).contains(&(c as u32)), nonzero);
            }
        }
        let rebuilt = BlockSparse::new(rows, cols, row_block, col_block, s.block_ptr().to_vec(),
            s.block_cols().to_vec(), s.values().to_vec());
        prop_assert_eq!(rebuilt.unwrap(), s);
    }
}

#[test]
fn malformed_parts_are_refused() {
    let bad = |indptr: Vec<u32>, indices: Vec<u32>| Csr::new(2, 3, indptr, indices, vec![1.0; 2]);
    assert!(matches!(
        bad(vec![0, 1], vec![0, 1]),
        Err(SparseError::Length { what: "indptr", .. })
    ));
    assert!(matches!(
        bad(vec![1, 1, 2], vec![0, 1]),
        Err(SparseError::RowPointers { .. })
    ));
    assert!(matches!(
        bad(vec![0, 2, 1], vec![0, 1]),
        Err(SparseError::RowPointers { .. })
    ));
    assert!(matches!(
        bad(vec![0, 1, 1], vec![0, 1]),
        Err(SparseError::RowPointers { .. })
    ));
    assert!(matches!(
        bad(vec![0, 2, 2], vec![1, 1]),
        Err(SparseError::Columns { row: 0, .. })
    ));
    assert!(matches!(
        bad(vec![0, 1, 2], vec![0, 3]),
        Err(SparseError::Columns { row: 1, .. })
    ));
    assert!(bad(vec![0, 1, 2], vec![2, 0]).is_ok());
    let err = bad(vec![0, 2, 2], vec![2, 1]).unwrap_err();
    assert!(err.to_string().contains("strictly increasing"), "{err}");
    assert!(matches!(
        BlockSparse::new(2, 2, 0, 1, vec![0], vec![], vec![]),
        Err(SparseError::BlockSize { .. })
    ));
    assert!(matches!(
        BlockSparse::new(2, 4, 2, 2, vec![0, 1], vec![0], vec![1.0; 3]),
        Err(SparseError::Length { what: "values", .. })
    ));
    assert!(matches!(
        BlockSparse::new(2, 4, 2, 2, vec![0, 1], vec![2], vec![1.0; 4]),
        Err(SparseError::Columns { .. })
    ));
}

#[test]
#[should_panic(expected = "Select::Magnitude: the threshold must be a non-negative number")]
fn a_negative_threshold_panics() {
    let _ = Csr::from_dense(1, 1, &[1.0], Select::Magnitude(-1.0));
}
