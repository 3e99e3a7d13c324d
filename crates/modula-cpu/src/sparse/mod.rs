//! Sparse-times-dense kernels on plain slices: the CPU side of `modula_sparse`.
//!
//! - [`sparsify`] builds the CSR form of a dense matrix in one pass per thread (AVX-512
//!   compress of each 16-wide chunk, or a branch-free scalar loop), and [`count_kept`]
//!   counts what it would keep.
//! - [`csr_matmul`] computes `C = S B + beta C + 1 bias^T` row by row: a panel of
//!   [`PANEL`] columns of a row of `C` stays in registers while the row's stored entries
//!   stream the matching rows of `B` past it (one vector load per FMA; `B`'s panel,
//!   `k x PANEL` floats, stays in L2 while every row of the task sweeps it). When the task's
//!   rows use each row of `B` [`PACK_REUSE`] times or more, the panel is first copied into a
//!   contiguous buffer: in place, its rows lie `m` floats apart, and with `m` a power of two
//!   (1024 here) they fall into a few cache sets, which hold a fraction of the panel. A
//!   copied panel of dense enough rows is walked in slices of [`DEPTH`] of its rows (which
//!   L1 holds) over blocks of [`ROW_BLOCK`] rows of `S`.
//! - [`sampled_matmul_t`] computes `(dY W^T)` at the stored entries only: a panel of a row of
//!   `dY` stays in registers and each stored `(i, p)` takes its dot product with row `p` of `W`.
//! - The block-sparse forms ([`block_matmul`], [`block_sampled_matmul_t`]) are one dense
//!   product per row block, by [`crate::gemm`], whose row-gathered views read just the rows of
//!   the dense operand at the active columns.
//!
//! Every kernel takes an [`Isa`], so that tests run the portable kernels on AVX-512 machines
//! too; `Cpu` passes [`Isa::detect`]. Parallel kernels split their work as the
//! [`Parallelism`] they are given says: `Cpu` passes its team of spinning threads.

/// The AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
mod avx512;
/// The block-sparse products, on the packed GEMM.
mod block;
/// The portable kernels (plain Rust, vectorised by the compiler where it can).
mod portable;

use std::sync::{Mutex, PoisonError};

use modula_sparse::{Csr, Select};

use crate::gemm::{AlignedBuf, Parallelism};

pub use block::{block_matmul, block_sampled_matmul_t, sparsify_blocks};

/// Columns of `C` (or of `dY`) one task keeps in registers per pass: 8 AVX-512 vectors. With
/// `k = 1024`, a panel of `B` is 512 KiB and stays in a 1 MiB L2 across rows.
pub const PANEL: usize = 128;

/// Stored entries per row of `B` (per task) from which [`csr_matmul`] copies each panel of
/// `B` into a contiguous, cache-line-aligned buffer before its rows use it: the copy reads
/// the panel once, and saves the cache-set conflicts of the strided panel on every later use.
/// In place, a panel's rows lie 4 KiB apart (`m = 1024`) and crowd into a few cache sets, so
/// they are read from L3 at every use; a scan of 1, 4 and 16 on the Emerald Rapids Xeon
/// (`n` = 32, 256, 1024 rows, 50-99% zeros) found 4 best or level at every point, and 1.5-3.3x
/// faster than 16 where the two differ (n = 32 at 50% and 80% zeros, n = 256 at 95%,
/// n = 1024 at 99%); below about 2 uses per row the copy costs more than the conflicts.
pub const PACK_REUSE: usize = 4;

/// Rows of a copied panel of `B` that [`csr_matmul`] runs over a block of [`ROW_BLOCK`] rows
/// of `S` before going on to the next ones, when the rows are dense enough
/// ([`DEPTH_MIN_ENTRIES`]): 64 rows of 128 columns are 32 KiB, which L1 holds, so each stored
/// entry's eight loads hit L1 instead of L2. Unsliced, the kernel ran at about half the dense
/// GEMM's FMA rate at 50% zeros, bound by L2 (its profile stalls on the loads of each entry's
/// row of `B`); sliced, the forward at 256 rows took 15-17% less time at 50-60% zeros on the
/// Emerald Rapids Xeon (one and two threads), and 32 did no better.
pub const DEPTH: usize = 64;

/// Stored entries a row needs, on average, in a slice of [`DEPTH`] rows of `B` for
/// [`csr_matmul`] to slice the panel: each slice loads and stores the row's eight vectors of
/// `C` once more, which sixteen entries (128 FMAs) repay. With 6 instead, rows at 85-90% zeros
/// (6-10 entries per slice) ran 1.1-1.4x slower than unsliced.
pub const DEPTH_MIN_ENTRIES: usize = 16;

/// Rows of `S` that [`csr_matmul`] takes through every slice of a panel before going on to
/// the next rows: their part of the panel of `C` (128 rows x 128 columns, 64 KiB) then stays
/// in L2 beside the copied panel of `B` while the slices reload it. Without the blocks, 1024
/// rows (512 KiB of `C`) made the sliced kernel 5-10% slower than the unsliced one; with
/// them it is 15% faster at 50-70% zeros.
pub const ROW_BLOCK: usize = 128;

/// Where a kernel call starts a row's panel of `C`: from `beta C + bias` (its first slice of
/// stored columns), or from the partial sum an earlier slice left in `C`.
#[derive(Clone, Copy)]
enum Init {
    Start,
    Continue,
}

impl Init {
    /// The start of a call over the stored columns in `depth`.
    fn of(depth: &std::ops::Range<usize>) -> Init {
        if depth.start == 0 {
            Init::Start
        } else {
            Init::Continue
        }
    }
}

thread_local! {
    /// Per-thread scratch for [`csr_matmul`]'s copied panels, kept between calls.
    static PANEL_BUFFER: std::cell::Cell<AlignedBuf> = const {
        std::cell::Cell::new(AlignedBuf::EMPTY)
    };
}

/// Multiply-adds below which a product (or a block-sparse product's row blocks) runs on the
/// calling thread. The spinning team hands work over in a microsecond or two, so even small
/// products gain from the split: on the Emerald Rapids Xeon (two threads, `k = m = 1024`), one
/// row at 90% zeros (1e5 multiply-adds) took 5.0-5.5 us against 7.0 on one thread, one row at
/// 50% 31-37 us against 62, 32 rows at 99% 19 us against 31, and one active block of 32
/// columns over 32 rows 16 us against 22. (The GEMM's own threshold, 32 times higher, dates
/// from the sleeping rayon pool, whose hand-off took about 10 us.)
pub(crate) const PAR_MIN_MACS: usize = 1 << 16;

/// Elements below which building or counting runs on the calling thread.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 16;

/// Which instruction set a sparse kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F with POPCNT (x86-64 only; both checked at run time); only valid where
    /// [`Isa::available`] lists it.
    Avx512,
    /// Plain Rust, on every machine.
    Portable,
}

impl Isa {
    /// The fastest instruction set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("popcnt") {
            return Isa::Avx512;
        }
        Isa::Portable
    }

    /// Every instruction set this CPU runs (for tests that compare them).
    pub fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        if Isa::detect() == Isa::Avx512 {
            all.push(Isa::Avx512);
        }
        all
    }

    /// # Panics
    /// If this CPU cannot run `self`, so that the `unsafe` AVX-512 calls below are sound.
    #[track_caller]
    fn assert_supported(self) {
        assert!(
            self == Isa::Portable || Isa::detect() == Isa::Avx512,
            "sparse kernel: {self:?} is not supported by this CPU"
        );
    }
}

/// Panics unless `B` (`b_len` values) is `k x m`, `C` (`c_len`) is `n x m` and the bias (if
/// any) holds `m` values, for `S` of `shape = [n, k]`.
#[track_caller]
fn check_product(
    op: &str,
    [n, k]: [usize; 2],
    b_len: usize,
    m: usize,
    bias: Option<&[f32]>,
    c_len: usize,
) {
    assert_eq!(b_len, k * m, "{op}: B is not {k}x{m}");
    assert_eq!(c_len, n * m, "{op}: C is not {n}x{m}");
    assert!(
        bias.is_none_or(|b| b.len() == m),
        "{op}: bias is not {m} long"
    );
}

/// Panics unless `dY` is `n x m`, `W` is `k x m` and the output is `n x k`, for `S` of
/// `shape = [n, k]`.
#[track_caller]
fn check_sampled(
    op: &str,
    [n, k]: [usize; 2],
    dy_len: usize,
    w_len: usize,
    m: usize,
    out_len: usize,
) {
    assert_eq!(dy_len, n * m, "{op}: dY is not {n}x{m}");
    assert_eq!(w_len, k * m, "{op}: W is not {k}x{m}");
    assert_eq!(out_len, n * k, "{op}: out is not {n}x{k}");
}

/// A pointer that parallel tasks write through, each to elements no other task touches.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks only write disjoint elements (each kernel says why), so sharing the pointer
// across threads is like handing each a disjoint `&mut` sub-slice.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// The CSR form of the row-major `rows x cols` matrix `data`, keeping what `select` keeps:
/// the same matrix as `Csr::from_dense`, in one pass per thread over `data` (each task
/// compresses its rows into a buffer of its own, reused across calls, then the buffers are
/// concatenated).
///
/// # Panics
/// If `data.len() != rows * cols`, `isa` is unsupported, or the entries do not fit in `u32`.
#[track_caller]
pub fn sparsify(
    isa: Isa,
    data: &[f32],
    rows: usize,
    cols: usize,
    select: Select,
    par: Parallelism<'_>,
) -> Csr {
    assert_eq!(data.len(), rows * cols, "sparsify: wrong data length");
    isa.assert_supported();
    select.validate();
    let tasks = if data.len() < PAR_MIN_ELEMS || cols == 0 {
        1
    } else {
        par.tasks().clamp(1, rows.max(1))
    };
    let per = rows.div_ceil(tasks).max(1);
    let parts: Vec<Part> = if tasks == 1 {
        vec![compress_rows(isa, data, cols, select)]
    } else {
        par.map(data.chunks(per * cols).collect(), &|chunk| {
            compress_rows(isa, chunk, cols, select)
        })
    };
    let nnz: usize = parts.iter().map(|p| p.indices.len()).sum();
    assert!(
        u32::try_from(nnz).is_ok() && u32::try_from(cols).is_ok(),
        "sparsify: {nnz} entries or {cols} columns do not fit in u32"
    );
    let (mut indptr, mut indices, mut values) = (
        Vec::with_capacity(rows + 1),
        Vec::with_capacity(nnz),
        Vec::with_capacity(nnz),
    );
    indptr.push(0u32);
    for part in parts {
        let base = indices.len() as u32;
        indptr.extend(part.ends.iter().map(|&e| base + e));
        indices.extend_from_slice(&part.indices);
        values.extend_from_slice(&part.values);
        // Kept for reuse up to a bound, so that one huge activation does not stay resident.
        let mut free = COMPRESS_BUFFERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < COMPRESS_KEEP_PAIRS && part.indices.capacity() <= COMPRESS_KEEP_ELEMS {
            free.push((part.indices, part.values));
        }
    }
    indptr.resize(rows + 1, nnz as u32);
    // SAFETY: every row's columns were produced in increasing order below `cols` by
    // `compress_rows`, the row ends are cumulative counts ending at `nnz`, and the sizes were
    // checked to fit in u32 just above.
    unsafe { Csr::from_parts_unchecked(rows, cols, indptr, indices, values) }
}

/// The compressed rows of one task: where each row ends (counted from the task's first
/// entry), and the entries' columns and values.
#[derive(Default)]
struct Part {
    ends: Vec<u32>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// Buffers for [`compress_rows`], kept between calls: the kernels need room for every
/// element, and a fresh reservation that large comes from the operating system as untouched
/// pages, whose first writes fault (about a quarter of building 256 x 1024 at 95% zeros, 30
/// us of 115 on one thread). A task takes a pair, [`sparsify`] copies the parts out and puts
/// back at most [`COMPRESS_KEEP_PAIRS`] pairs of at most [`COMPRESS_KEEP_ELEMS`] elements.
/// (The lock is held for one push or pop; a panic elsewhere cannot leave the list
/// inconsistent, so a poisoned lock is taken as it is.)
static COMPRESS_BUFFERS: Mutex<Vec<(Vec<u32>, Vec<f32>)>> = Mutex::new(Vec::new());

/// Most buffer pairs [`COMPRESS_BUFFERS`] keeps: one per task of a few concurrent calls.
const COMPRESS_KEEP_PAIRS: usize = 16;

/// Largest buffer (elements) [`COMPRESS_BUFFERS`] keeps: 4 Mi elements, 32 MiB a pair, so the
/// list holds at most 512 MiB however large an activation was once built.
const COMPRESS_KEEP_ELEMS: usize = 1 << 22;

/// Compresses whole rows of `data` (`cols` wide).
fn compress_rows(isa: Isa, data: &[f32], cols: usize, select: Select) -> Part {
    let rows = data.len() / cols.max(1);
    // Room for every element plus one vector of slack: the kernels store whole vectors
    // (or, portably, one element) past the last kept entry.
    let cap = data.len() + 16;
    let (mut indices, mut values) = COMPRESS_BUFFERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    indices.clear();
    values.clear();
    indices.reserve(cap);
    values.reserve(cap);
    let mut ends = Vec::with_capacity(rows);
    let mut n = 0usize;
    for row in data.chunks_exact(cols.max(1)).take(rows) {
        let spare_i = indices.spare_capacity_mut();
        let spare_v = values.spare_capacity_mut();
        n += match isa {
            // SAFETY: the CPU runs AVX-512F and POPCNT (checked by the caller's
            // `assert_supported`), and at least `row.len() + 16` slots remain from `n` (the
            // capacity covers all of `data` plus 16, and at most `n` elements of earlier rows
            // were kept).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                avx512::compress_row(row, select, &mut spare_i[n..], &mut spare_v[n..])
            },
            _ => portable::compress_row(row, select, &mut spare_i[n..], &mut spare_v[n..]),
        };
        ends.push(n as u32);
    }
    // SAFETY: the kernels initialised the first `n` slots of both vectors.
    unsafe {
        indices.set_len(n);
        values.set_len(n);
    }
    Part {
        ends,
        indices,
        values,
    }
}

/// How many entries of `data` `select` keeps.
///
/// # Panics
/// If `isa` is unsupported.
#[track_caller]
pub fn count_kept(isa: Isa, data: &[f32], select: Select, par: Parallelism<'_>) -> usize {
    isa.assert_supported();
    select.validate();
    let count = |chunk: &[f32]| match isa {
        // SAFETY: the CPU runs AVX-512F and POPCNT (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::count_kept(chunk, select) },
        _ => chunk.iter().filter(|&&v| select.keeps(v)).count(),
    };
    if data.len() < PAR_MIN_ELEMS || par.tasks() <= 1 {
        count(data)
    } else {
        let chunks = data.chunks(data.len().div_ceil(par.tasks())).collect();
        par.map(chunks, &count).into_iter().sum()
    }
}

/// `C = S B + beta C + 1 bias^T`, with `S` `[n x k]`, `B` row-major `[k x m]`, `C` row-major
/// `[n x m]` and `bias` `m` values. With `beta == 0`, `C` is not read (NaN does not leak).
///
/// Work is split into at most `par.tasks()` tasks: by column panels when there are enough,
/// else by rows. Each task takes its panels of `C` one at a time (128 columns in registers),
/// copies the panel of `B` when its rows reuse it ([`PACK_REUSE`]), and, when they are dense
/// enough, runs the copy in slices of [`DEPTH`] rows over blocks of [`ROW_BLOCK`] rows of `S`.
///
/// # Panics
/// If the lengths do not match the shapes or `isa` is unsupported.
#[allow(clippy::too_many_arguments)] // The product's operands and options, as `gemm` takes them.
#[track_caller]
pub fn csr_matmul(
    isa: Isa,
    s: &Csr,
    b: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    beta: f32,
    c: &mut [f32],
    par: Parallelism<'_>,
) {
    let n = s.rows();
    check_product("csr_matmul", s.shape(), b.len(), m, bias, c.len());
    isa.assert_supported();
    let out = SharedOut(c.as_mut_ptr());
    let kernel: CsrRows = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::csr_rows,
        _ => portable::csr_rows,
    };
    let task = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let rows_panel = RowsPanel {
            s,
            m,
            bias,
            beta,
            c: out,
        };
        let k = s.cols();
        let indptr = s.indptr();
        let stored = (indptr[rows.end] - indptr[rows.start]) as usize;
        let pack = stored >= PACK_REUSE * k;
        // A copied panel is taken DEPTH rows at a time, so that they stay in L1 across a
        // block of ROW_BLOCK rows, when rows have enough entries in such a slice to repay
        // reloading and storing their part of C once per slice.
        let depth = if pack && stored * DEPTH >= DEPTH_MIN_ENTRIES * rows.len() * k {
            DEPTH
        } else {
            k.max(1)
        };
        // Taken from the thread's cache while in use (a nested call allocates its own).
        let mut packed = if pack {
            PANEL_BUFFER.take().with_len(k * PANEL)
        } else {
            AlignedBuf::default()
        };
        // Where each row's next part starts, reset for every panel.
        let mut cursor = vec![0u32; rows.len()];
        for j0 in cols.clone().step_by(PANEL) {
            cursor.copy_from_slice(&indptr[rows.clone()]);
            let width = PANEL.min(cols.end - j0);
            let panel = if pack {
                let dst = &mut packed.as_mut_slice()[..k * width];
                for (q, row) in dst.chunks_exact_mut(width).enumerate() {
                    row.copy_from_slice(&b[q * m + j0..q * m + j0 + width]);
                }
                BPanel {
                    b: &packed.as_slice()[..k * width],
                    ld: width,
                }
            } else {
                BPanel { b: &b[j0..], ld: m }
            };
            for r0 in rows.clone().step_by(ROW_BLOCK) {
                let block = r0..(r0 + ROW_BLOCK).min(rows.end);
                let at = &mut cursor[r0 - rows.start..block.end - rows.start];
                // At least one slice, so that k = 0 still writes beta C + bias.
                for q0 in (0..k.max(1)).step_by(depth) {
                    let part = q0..(q0 + depth).min(k);
                    // SAFETY: the kernel's ISA is present (checked above); the panel holds
                    // `k` rows of `width` columns and every stored column is below `k` (a
                    // `Csr` invariant); this task writes only rows `rows` x columns
                    // `j0..j0 + width` of C, which no other task writes.
                    unsafe { kernel(&rows_panel, block.clone(), j0, width, part, at, &panel) }
                }
            }
        }
        if pack {
            PANEL_BUFFER.set(packed);
        }
    };
    run_grid(n, m, s.nnz().saturating_mul(m), par, &task);
}

/// Splits `n` rows by `m` columns into at most `par.tasks()` tasks and runs `task` on each:
/// column ranges of whole panels when there are at least as many panels as tasks, else row
/// ranges. Columns come first because each task then streams only its own panels of the dense
/// operand into its core's L2, once, and reuses them for every row; a split by rows makes
/// every task load every panel, which at high sparsity costs more than the arithmetic.
/// Products under [`PAR_MIN_MACS`] run on the calling thread.
fn run_grid(
    n: usize,
    m: usize,
    macs: usize,
    par: Parallelism<'_>,
    task: &(dyn Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync),
) {
    let threads = par.tasks();
    if threads <= 1 || macs < PAR_MIN_MACS {
        task(0..n, 0..m);
        return;
    }
    let panels = m.div_ceil(PANEL);
    let parts: Vec<_> = if panels >= threads || n < 2 {
        let per = panels.div_ceil(threads.min(panels)) * PANEL;
        (0..m)
            .step_by(per)
            .map(|j| (0..n, j..(j + per).min(m)))
            .collect()
    } else {
        let per = n.div_ceil(threads.min(n));
        (0..n)
            .step_by(per)
            .map(|i| (i..(i + per).min(n), 0..m))
            .collect()
    };
    par.for_each(parts, &|(rows, cols)| task(rows, cols));
}

/// A kernel of [`csr_matmul`] (AVX-512 or portable): rows, first column, width, the slice of
/// `B`'s rows, the rows' cursors and the panel (see `avx512::csr_rows`).
type CsrRows = unsafe fn(
    &RowsPanel<'_>,
    std::ops::Range<usize>,
    usize,
    usize,
    std::ops::Range<usize>,
    &mut [u32],
    &BPanel<'_>,
);

/// The columns `j0..j0 + width` of `B` that one panel of [`csr_matmul`] reads: row `q`'s
/// start at `b[q * ld]`, in place (`ld = m`) or copied (`ld = width`).
struct BPanel<'a> {
    b: &'a [f32],
    ld: usize,
}

/// The operands of [`csr_matmul`] as one task's kernel sees them.
/// (`B` comes separately, as a [`BPanel`] per panel.)
struct RowsPanel<'a> {
    s: &'a Csr,
    m: usize,
    bias: Option<&'a [f32]>,
    beta: f32,
    c: SharedOut,
}

/// `out[i * k + p] = (dY W^T)[i, p]` for every stored `(i, p)` of `S` (`[n x k]`), with `dY`
/// `[n x m]` and `W` `[k x m]` row-major; other elements of `out` are left as they are (the
/// caller passes zeros).
///
/// Work is split by ranges of `p` (each task reads only its rows of `W`) when there are enough,
/// else by rows; each stored entry is written by exactly one task either way.
///
/// # Panics
/// If the lengths do not match the shapes or `isa` is unsupported.
#[allow(clippy::too_many_arguments)] // The product's operands, as `csr_matmul` takes them.
#[track_caller]
pub fn sampled_matmul_t(
    isa: Isa,
    s: &Csr,
    dy: &[f32],
    w: &[f32],
    m: usize,
    out: &mut [f32],
    par: Parallelism<'_>,
) {
    let (n, k) = (s.rows(), s.cols());
    check_sampled(
        "sampled_matmul_t",
        s.shape(),
        dy.len(),
        w.len(),
        m,
        out.len(),
    );
    isa.assert_supported();
    let dst = SharedOut(out.as_mut_ptr());
    let task = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let sampled = Sampled {
            s,
            dy,
            w,
            m,
            out: dst,
        };
        match isa {
            // SAFETY: AVX-512F is present; `dy` is `n x m`, `w` is `k x m`, stored columns are
            // below `k`; this task writes only the stored entries of rows `rows` whose column
            // lies in `cols`, which no other task writes.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::sampled_rows(&sampled, rows, cols) },
            // SAFETY: as above, for the portable kernel.
            _ => unsafe { portable::sampled_rows(&sampled, rows, cols) },
        }
    };
    // The grid splits columns of the output, here the `k` columns of `S`.
    run_grid(n, k, s.nnz().saturating_mul(m), par, &task);
}

/// The operands of [`sampled_matmul_t`] as one task's kernel sees them.
struct Sampled<'a> {
    s: &'a Csr,
    dy: &'a [f32],
    w: &'a [f32],
    m: usize,
    out: SharedOut,
}

/// The next stored entries of row `i` of `s`, from position `*at` up to the first whose column
/// is `end` or more, and moves `*at` past them: a row's parts, taken in order of columns, at
/// the cost of one comparison per entry.
fn next_part<'a>(s: &'a Csr, i: usize, at: &mut u32, end: usize) -> (&'a [u32], &'a [f32]) {
    let start = *at as usize;
    let row_end = s.indptr()[i + 1] as usize;
    let idx = &s.indices()[start..row_end];
    let len = if end >= s.cols() {
        idx.len()
    } else {
        idx.iter().take_while(|&&q| (q as usize) < end).count()
    };
    *at = (start + len) as u32;
    (&idx[..len], &s.values()[start..start + len])
}

/// The stored entries of row `i` of `s` whose column lies in `cols`.
fn row_in<'a>(s: &'a Csr, i: usize, cols: &std::ops::Range<usize>) -> (&'a [u32], &'a [f32]) {
    let (idx, vals) = s.row(i);
    let lo = idx.partition_point(|&p| (p as usize) < cols.start);
    let hi = idx.partition_point(|&p| (p as usize) < cols.end);
    (&idx[lo..hi], &vals[lo..hi])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid covers every row and column exactly once, whichever way it splits.
    #[test]
    fn the_grid_covers_the_output_once() {
        for (n, m, threads) in [(1, 1000, 2), (3, 256, 4), (100, 1024, 2), (7, 64, 3)] {
            let team = crate::Team::new(threads);
            let seen = Mutex::new(vec![0u8; n * m]);
            let task = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
                let mut seen = seen.lock().unwrap();
                for i in rows {
                    for j in cols.clone() {
                        seen[i * m + j] += 1;
                    }
                }
            };
            run_grid(n, m, usize::MAX, Parallelism::Team(&team), &task);
            assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
        }
    }
}
