//! [`CoActivation`]: how often two neurons of a ReLU layer are active on the same input.

use modula_nn::crossover;
use modula_sparse::{Select, SparseBackend};
use modula_tensor::{BackendError, Transpose};

/// The most rows one call of [`CoActivation::add`] takes: every count of a chunk is an integer
/// no larger than its rows, which `f32` holds exactly up to `2^24`.
pub const MAX_ROWS: usize = 1 << 24;

/// Co-activation counts of a layer of `width` neurons over the rows seen so far: entry
/// `(i, j)` counts the rows on which neurons `i` and `j` are both active (`> 0`), so the
/// diagonal counts each neuron's active rows. The counts are exact integers.
///
/// ```
/// use modula_cluster::CoActivation;
/// use modula_tensor::{Backend, Reference};
/// let b = Reference;
/// let mut co = CoActivation::new(3);
/// let h = b.upload([2, 3], &[1.0, 0.0, 2.0, 0.5, 0.3, 0.0]);
/// co.add(&b, &h)?;
/// assert_eq!(co.rows(), 2);
/// assert_eq!((co.count(0, 0), co.count(0, 1), co.count(0, 2), co.count(1, 2)), (2, 1, 1, 0));
/// # Ok::<(), modula_tensor::BackendError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoActivation {
    width: usize,
    rows: u64,
    counts: Vec<u64>,
}

impl CoActivation {
    /// Empty counts for a layer of `width` neurons.
    pub fn new(width: usize) -> Self {
        CoActivation {
            width,
            rows: 0,
            counts: vec![0; width * width],
        }
    }

    /// Adds the rows of `h` (`[n, width]`, a layer's activations, one input per row): the
    /// chunk's counts are `S^T S` for its binary activation matrix `S`, computed by the sparse
    /// engine (`S^T` in CSR form times `S`) when `S` is sparser than the engine's crossover
    /// density, else by the dense GEMM.
    ///
    /// # Errors
    /// A device error while reading the activations or the product.
    ///
    /// # Panics
    /// If `h` is not `width` wide or has more than [`MAX_ROWS`] rows.
    #[track_caller]
    pub fn add<B: SparseBackend>(&mut self, b: &B, h: &B::Tensor) -> Result<(), BackendError> {
        let [n, d] = b.shape(h);
        assert_eq!(
            d, self.width,
            "co-activation counts of {} neurons given {d} activations per row",
            self.width
        );
        assert!(
            n <= MAX_ROWS,
            "co-activation chunk of {n} rows; add at most {MAX_ROWS} rows at a time"
        );
        if n == 0 || d == 0 {
            return Ok(());
        }
        let active = b.sparsify(h, Select::Relu)?;
        let binary = active.with_values(vec![1.0; active.nnz()]);
        let dense = b.densify(&binary);
        let mut product = b.zeros([d, d]);
        if binary.density() < crossover(d) {
            b.sparse_matmul(&binary.transpose(), &dense, None, 0.0, &mut product);
        } else {
            b.matmul(
                1.0,
                &dense,
                Transpose::Yes,
                &dense,
                Transpose::No,
                0.0,
                &mut product,
            );
        }
        for (total, v) in self.counts.iter_mut().zip(b.download(&product)?) {
            *total += v as u64;
        }
        self.rows += n as u64;
        Ok(())
    }

    /// Neurons of the layer.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows (inputs) counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows on which neurons `i` and `j` are both active.
    ///
    /// # Panics
    /// If `i` or `j` is not below the width.
    #[track_caller]
    pub fn count(&self, i: usize, j: usize) -> u64 {
        assert!(i < self.width && j < self.width, "neuron out of range");
        self.counts[i * self.width + j]
    }

    /// All counts, row-major `width x width`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The co-activation of `i` and `j` relative to how often each is active:
    /// `count(i, j) / sqrt(count(i, i) count(j, j))`, the cosine of their binary activation
    /// vectors (1 on the diagonal of a neuron that ever fires, 0 for a neuron that never does).
    pub fn cosine(&self, i: usize, j: usize) -> f64 {
        let norm = (self.count(i, i) as f64 * self.count(j, j) as f64).sqrt();
        if norm == 0.0 {
            0.0
        } else {
            self.count(i, j) as f64 / norm
        }
    }
}
