//! Packed single-precision GEMM: `C = alpha * op(A) * op(B) + beta * C`.
//!
//! The structure is the classic BLIS one. `op(B)` is packed into `KC x NR` column strips and
//! `op(A)` into `MR x KC` row strips, so that the microkernel reads both operands
//! contiguously whatever their original strides are (transposes therefore cost only the
//! packing, which is done once per block). The microkernel keeps an `MR x NR` tile of `C` in
//! registers and performs rank-1 updates along `k`.
//!
//! - On x86-64 with AVX-512F (detected at run time), the microkernel is a 12 x 32 tile: two zmm
//!   registers per row, 24 accumulators, one broadcast of `A` and two FMAs per row and depth.
//!   (12 rows leave the 32 vector registers enough room for the two `B` vectors and the
//!   broadcast without spilling; 24 independent FMA chains hide the FMA latency.)
//! - Elsewhere a portable kernel with the same tile and packing is used (compiled for AVX2+FMA
//!   when the CPU has it), so every machine shares the packing, blocking and threading code.
//!   Setting [`KERNEL_VAR`] to `portable` selects it on any machine.
//!
//! When `op(B)` has unit column stride and `op(A)` has few rows, packing `B` would cost as much
//! as the product itself (every element of `B` is used only `m` times), so [`gemm`] then lets
//! the microkernel read `B` in place, prefetching it in software since rows of `B` are far
//! apart. When the same `B` multiplies many small `A` blocks (one
//! module's weights applied to its row block, for example), pack it once with [`PackedRhs`] and
//! call [`gemm_packed`].
//!
//! Parallelism is explicit ([`Parallelism`]): work is split into rectangular parts of `C`
//! that run on the threads of a [`Team`] (the calling thread among them), as `Cpu` does, or
//! as rayon tasks in the *current* rayon pool (a caller's own `rayon::ThreadPool::install`
//! picks which).
//!
//! ```
//! use modula_cpu::gemm::{gemm, MatMut, MatRef, Parallelism};
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 x 3, row-major
//! let mut c = [f32::NAN; 4];
//! // C = A * A^T (the transpose is only a change of strides).
//! gemm(
//!     1.0,
//!     MatRef::row_major(&a, 2, 3),
//!     MatRef::row_major(&a, 2, 3).t(),
//!     0.0,
//!     MatMut::row_major(&mut c, 2, 2),
//!     Parallelism::Sequential,
//! );
//! assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
//! ```
//!
//! The code is split by file: [`MatRef`] and [`MatMut`] (views), packing and its scratch
//! buffers, the blocked loop nest and its split into tasks, and the microkernels (`kernel`,
//! one file per instruction set).

/// The BLIS loop nest over one rectangle of `C`, and the split of `C` into tasks.
mod blocking;
/// The microkernels: the register tile, its AVX-512 and portable forms.
mod kernel;
/// Packing of operands into strips, and the scratch buffers that hold them.
mod pack;

pub(crate) use pack::AlignedBuf;
/// Strided, optionally gathered, views of matrices.
mod view;

use std::sync::{Mutex, PoisonError};

use crate::team::Team;

use blocking::{Rhs, run};
pub use kernel::KERNEL_VAR;
#[cfg(target_arch = "x86_64")]
use kernel::avx512;
use kernel::{Kernel, MR, NR};
pub use pack::PackedRhs;
use pack::{B_BUFFER, MAX_CACHED_FLOATS, pack_b_strip};
pub use view::{MatMut, MatRef};

/// Depth of one packed block. One `A` strip (`MR x KC`, 12 KiB) plus the `B` strip streaming
/// past it (`KC x NR`, 32 KiB) fit in a 48 KiB L1 cache, so the `A` strip stays there while the
/// microkernel sweeps the `B` strips. (Depths of 256, 384 and 512 measured within noise of
/// each other on the target Xeon; the smaller one also suits 32 KiB L1 caches best.)
pub(super) const KC: usize = 256;
/// Rows of one packed `A` block (a multiple of `MR`): `MC x KC` floats (240 KiB) stay in L2.
const MC: usize = 240;
/// Columns handled per pass over one packed `A` block: the `KC x NC` slab of packed `B` that
/// every `A` strip of the block sweeps (512 KiB) stays in L2.
const NC: usize = 512;
/// Products with fewer multiply-adds than this run on the calling thread. The threshold was
/// 2^21 when products were handed to a rayon pool, whose sleeping threads took about 10 us to
/// wake; the spinning team hands a part over in a microsecond or two, and on the 2-core Xeon
/// one row times a 512 x 512 matrix (2^18 multiply-adds) ran 1.3-1.7x faster on two threads
/// than on one with this threshold (two paired runs of each build), against 0.9-1.3x before.
const PAR_MIN_MACS: usize = 1 << 18;
/// Packing of `B` runs in parallel from this many elements (1 MiB) on: below it the copy is
/// shorter than the hand-off.
const PAR_MIN_PACK: usize = 1 << 18;

/// Most rows of A for which `A B^T` with row-contiguous operands is computed as dot products
/// of rows (reading `B` once per [`avx512::DOT_ROWS`] rows of A) rather than by packing
/// `B^T`.
#[cfg(target_arch = "x86_64")]
const DOT_MAX_ROWS: usize = 16;

/// Most rows of A for which `A W^T` with `W`'s rows contiguous is computed by [`gemm_wt`]
/// (reading `W` in place) rather than by packing `W^T`. Measured on the 2-core Xeon, one
/// thread per module, `dY W_m^T` over 16 modules of 64 rows ran 1.33x faster than the packed
/// path (as fast as `X W_m`, which reads `W` in place too), 128 rows 1.16x and 256 rows
/// 1.01-1.03x; at 16 rows the dot products above stay faster (0.77-0.80x for this path).
#[cfg(target_arch = "x86_64")]
const WT_MAX_ROWS: usize = 128;

/// How a product may be split across threads.
#[derive(Clone, Copy, Debug)]
pub enum Parallelism<'p> {
    /// Run on the calling thread only.
    Sequential,
    /// Split into at most this many rayon tasks, executed in the current rayon pool (call from
    /// inside a pool's `install` to choose its threads).
    Rayon(usize),
    /// Split across the threads of this team, the calling thread computing its share too:
    /// for a caller outside any pool, which would otherwise hand the whole product to a pool
    /// and sleep until a pool thread woke it again (see [`Team`] for why its threads spin
    /// between products).
    Team(&'p Team),
}

impl Parallelism<'_> {
    /// The most tasks a product may be split into (1 when sequential).
    pub fn tasks(self) -> usize {
        match self {
            Parallelism::Sequential => 1,
            Parallelism::Rayon(n) => n.max(1),
            Parallelism::Team(team) => team.threads(),
        }
    }

    /// Runs `f` on every item, on at most [`tasks`](Self::tasks) threads, the calling thread
    /// among them. On a team each thread takes the next item from a shared queue when it is
    /// done with one (items of unequal cost, such as row blocks of a sparse product, then
    /// share out evenly); in a rayon pool each task takes a run of consecutive items.
    pub(crate) fn for_each<T: Send>(self, items: Vec<T>, f: &(impl Fn(T) + Sync)) {
        let tasks = self.tasks().min(items.len());
        if tasks <= 1 {
            items.into_iter().for_each(f);
            return;
        }
        if let Parallelism::Team(team) = self {
            let queue = Mutex::new(items.into_iter());
            team.run(tasks, &|_| {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                    let Some(item) = next else { break };
                    f(item);
                }
            });
            return;
        }
        let per = items.len().div_ceil(tasks);
        let mut runs = Vec::with_capacity(tasks);
        let mut items = items.into_iter();
        loop {
            let run: Vec<T> = items.by_ref().take(per).collect();
            if run.is_empty() {
                break;
            }
            runs.push(run);
        }
        rayon::in_place_scope(|scope| {
            let mut runs = runs.into_iter();
            let first = runs.next().expect("at least two runs");
            for run in runs {
                scope.spawn(move |_| run.into_iter().for_each(f));
            }
            first.into_iter().for_each(f);
        });
    }

    /// `f` of every item, in the items' order, computed as [`for_each`](Self::for_each) runs
    /// them.
    pub(crate) fn map<T: Send, R: Send + Default>(
        self,
        items: Vec<T>,
        f: &(impl Fn(T) -> R + Sync),
    ) -> Vec<R> {
        let mut out: Vec<R> = std::iter::repeat_with(R::default)
            .take(items.len())
            .collect();
        let work: Vec<(T, &mut R)> = items.into_iter().zip(&mut out).collect();
        self.for_each(work, &|(item, slot): (T, &mut R)| *slot = f(item));
        out
    }
}

/// `C = alpha * op(A) * op(B) + beta * C`, with `op(A)` given by `a` (`m x k`), `op(B)` by `b`
/// (`k x n`) and `C` by `c` (`m x n`).
///
/// With `beta == 0` the previous contents of `C` are ignored (NaN included); with `k == 0`,
/// `C = beta * C`.
///
/// # Panics
/// If the shapes do not chain, or `C` is [uninitialised](MatMut::uninit) and `beta != 0`.
#[track_caller]
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>, par: Parallelism) {
    gemm_impl(alpha, a, b, beta, None, c, par);
}

/// `C = alpha * op(A) * op(B) + 1 bias^T`: a product whose every row of `C` starts as `bias`
/// (`n` values), as a layer's output does. The previous contents of `C` are ignored, so `C`
/// may be [uninitialised](MatMut::uninit); the bias is added as each tile is stored, which
/// saves a pass over `C`.
///
/// ```
/// use modula_cpu::gemm::{gemm_bias, MatMut, MatRef, Parallelism};
/// let x = [1.0, 2.0]; // 1 x 2
/// let w = [1.0, 0.0, 0.0, 1.0];
/// let mut y = [f32::NAN; 2];
/// gemm_bias(1.0, MatRef::row_major(&x, 1, 2), MatRef::row_major(&w, 2, 2), &[10.0, 20.0],
///           MatMut::row_major(&mut y, 1, 2), Parallelism::Sequential);
/// assert_eq!(y, [11.0, 22.0]);
/// ```
///
/// # Panics
/// If the shapes do not chain or `bias` does not hold `n` values.
#[track_caller]
pub fn gemm_bias(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    bias: &[f32],
    c: MatMut<'_>,
    par: Parallelism,
) {
    assert_eq!(
        bias.len(),
        b.cols,
        "gemm_bias: {} bias values for {} columns",
        bias.len(),
        b.cols
    );
    gemm_impl(alpha, a, b, 0.0, Some(bias), c, par);
}

/// [`gemm`] and [`gemm_bias`].
#[track_caller]
fn gemm_impl(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    bias: Option<&[f32]>,
    c: MatMut<'_>,
    par: Parallelism,
) {
    check_shapes(&a, b.rows, b.cols, &c);
    assert!(
        c.init || beta == 0.0,
        "gemm: an uninitialised C needs beta == 0 (got {beta})"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale_c(c, beta, bias);
        return;
    }
    let tasks = task_count(m, k, n, par);
    // `A W^T` with `W`'s rows contiguous (the backward `dY W^T` of a layer with row-major
    // weights) and only a few rows of A: packing `W^T` would transpose all of `W`, a pass over
    // the weights that overlaps no arithmetic, for a few output rows. Below `WT_MAX_ROWS` rows
    // the product reads `W` in place instead, each task its own rows of `W` (columns of C).
    // (Those paths store no bias: a layer's biases belong to its forward `X W`.)
    #[cfg(target_arch = "x86_64")]
    if bias.is_none()
        && b.row_stride == 1
        && !b.gathered()
        && m <= WT_MAX_ROWS
        && matches!(Kernel::detect(), Kernel::Avx512)
    {
        let parts = split_cols(b, c, tasks, MR);
        let par = if parts.len() > 1 {
            par
        } else {
            Parallelism::Sequential
        };
        par.for_each(parts, &|(b, c)| w_in_place(alpha, &a, &b, beta, c));
        return;
    }
    // Reading B in place (with software prefetch) saves a full packing pass over it, which
    // costs as much as the product itself for a few rows of A; measured, the in-place kernel
    // runs within a few percent of the packed one, so packing only pays for tall products,
    // where each thread sweeps B many times. Up to three sweeps (`3 * MC` rows) read B in
    // place: a 512-row product on one thread (a module's block of the modular layer, or the
    // weight gradient `X^T dY` of a 512-wide layer) sweeps it three times, and on the 2-core
    // Xeon reading in place ran it 3-5% faster than packing (paired runs against MKL).
    let rows_per_task = if m.div_ceil(MR) >= tasks {
        m.div_ceil(tasks)
    } else {
        m
    };
    let par = if tasks > 1 {
        par
    } else {
        Parallelism::Sequential
    };
    if b.col_stride == 1 && !b.gathered() && rows_per_task <= 3 * MC {
        run(alpha, a, Rhs::Direct(b), beta, bias, c, tasks, par);
    } else {
        // The packed copy of B is scratch: keep its allocation for this thread's next call, as
        // allocating and faulting in a fresh megabyte costs a noticeable share of a product of
        // this size.
        let buf = B_BUFFER.take();
        let packed = PackedRhs::pack_into(b, par, buf);
        run(alpha, a, Rhs::Packed(&packed), beta, bias, c, tasks, par);
        if packed.buf.vec.len() <= MAX_CACHED_FLOATS {
            B_BUFFER.set(packed.buf);
        }
    }
}

/// The columns of `C` (and of `op(B)`) split into at most `tasks` runs of whole blocks of
/// `unit` columns.
fn split_cols<'b, 'c>(
    b: MatRef<'b>,
    mut c: MatMut<'c>,
    tasks: usize,
    unit: usize,
) -> Vec<(MatRef<'b>, MatMut<'c>)> {
    let blocks = c.cols.div_ceil(unit);
    let tasks = tasks.clamp(1, blocks.max(1));
    let mut parts = Vec::with_capacity(tasks);
    let mut j0 = 0;
    for t in 1..=tasks {
        let j1 = (blocks * t / tasks * unit).min(b.cols);
        let (left, right) = c.split_cols(j1 - j0);
        parts.push((b.cols_range(j0, j1), left));
        c = right;
        j0 = j1;
    }
    parts
}

/// `C = alpha * A * W^T + beta * C` reading `W` in place, where `op(B) = W^T` has `W`'s rows
/// contiguous and A has at most [`WT_MAX_ROWS`] rows: by dot products of contiguous rows
/// for the fewest rows, otherwise by [`gemm_wt`].
#[cfg(target_arch = "x86_64")]
fn w_in_place(alpha: f32, a: &MatRef<'_>, b: &MatRef<'_>, beta: f32, c: MatMut<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m > DOT_MAX_ROWS || a.col_stride != 1 || a.col_map.is_some() {
        gemm_wt(alpha, a, b, beta, c);
        return;
    }
    // A's rows may be gathered: the kernel takes where each one starts.
    let mut a_rows = [std::ptr::null(); DOT_MAX_ROWS];
    for (i, row) in a_rows[..m].iter_mut().enumerate() {
        *row = a.data[a.row_offset(i)..].as_ptr();
    }
    // SAFETY: the views were bounds-checked at construction (every element (i, p) of A and
    // (p, j) of op(B) lies inside its slice), C is m x n with its row stride, and AVX-512F is
    // present.
    unsafe {
        avx512::dot_rows(
            alpha,
            &a_rows[..m],
            k,
            b.data.as_ptr(),
            b.col_stride,
            n,
            beta,
            c.ptr,
            c.row_stride,
        )
    };
}

/// Depth per pass of [`gemm_wt`]: twelve rows of `W` at this depth (24 KiB) stay in L1 while
/// every strip of `A^T` streams past them.
#[cfg(target_arch = "x86_64")]
const WT_DEPTH: usize = 512;

/// `C = alpha * A * W^T + beta * C` for a few rows of `A` (`m x k`), where `op(B) = W^T`
/// (`k x n`) and `W`'s rows are contiguous. It computes `C^T = W A^T` with the microkernel's
/// operands swapped: `W` is the broadcast operand, read in place twelve rows at a time from
/// front to back (so its loads overlap the arithmetic, as `X W` reads its weights), against
/// `A^T` packed in 32-row strips (small: `A` has few rows), and each tile of `C^T` is stored
/// transposed.
///
/// Only for AVX-512, one task, and `b` not gathered (the caller checks).
#[cfg(target_arch = "x86_64")]
fn gemm_wt(alpha: f32, a: &MatRef<'_>, b: &MatRef<'_>, beta: f32, c: MatMut<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (ldw, ldc) = (b.col_stride, c.row_stride);
    let c_ptr = c.ptr;
    // `A^T` is the packed operand, its strips laid out as B strips are.
    let at = a.t();
    let strips = m.div_ceil(NR);
    let mut buf = B_BUFFER.take().with_len(strips * WT_DEPTH.min(k) * NR);
    for p0 in (0..k).step_by(WT_DEPTH) {
        let kc = WT_DEPTH.min(k - p0);
        let packed = buf.as_mut_slice();
        for (s, strip) in packed.chunks_exact_mut(kc * NR).take(strips).enumerate() {
            pack_b_strip(&at, p0, kc, s * NR, strip);
        }
        // The first depth block applies the caller's beta; later ones accumulate.
        let beta = if p0 == 0 { beta } else { 1.0 };
        for i0 in (0..n).step_by(MR) {
            for s in 0..strips {
                let tile = avx512::WtTile {
                    kc,
                    w: b.data[i0 * ldw + p0..].as_ptr(),
                    ldw,
                    b: packed[s * kc * NR..].as_ptr(),
                    // Rows s * NR.. of C (the strip's rows of A), columns i0.. (W's rows).
                    c: c_ptr.wrapping_add(s * NR * ldc + i0),
                    ldc,
                    rows: MR.min(n - i0),
                    pairs: NR.min(m - s * NR),
                    alpha,
                    beta,
                };
                // SAFETY: W's rows i0..i0 + rows hold kc readable values from depth p0 (the
                // view was bounds-checked at construction: element (p, j) of W^T is
                // `data[j * ldw + p]`), the strip holds kc x NR packed values, the C block
                // (pairs x rows, rows ldc apart) lies inside C, and AVX-512F is present.
                unsafe { avx512::wt_tile(&tile) };
            }
        }
    }
    if buf.vec.len() <= MAX_CACHED_FLOATS {
        B_BUFFER.set(buf);
    }
}

/// `C = alpha * op(A) * B + beta * C` with a pre-packed `B` (see [`PackedRhs`]).
///
/// Same contract as [`gemm`].
///
/// # Panics
/// If the shapes do not chain.
#[track_caller]
pub fn gemm_packed(
    alpha: f32,
    a: MatRef<'_>,
    b: &PackedRhs,
    beta: f32,
    c: MatMut<'_>,
    par: Parallelism,
) {
    check_shapes(&a, b.k, b.n, &c);
    let (m, k, n) = (a.rows, a.cols, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        c.init || beta == 0.0,
        "gemm_packed: an uninitialised C needs beta == 0 (got {beta})"
    );
    if k == 0 {
        scale_c(c, beta, None);
        return;
    }
    let tasks = task_count(m, k, n, par);
    run(alpha, a, Rhs::Packed(b), beta, None, c, tasks, par);
}

#[track_caller]
fn check_shapes(a: &MatRef<'_>, k: usize, n: usize, c: &MatMut<'_>) {
    assert!(
        a.cols == k && c.rows == a.rows && c.cols == n,
        "gemm: shapes do not chain: A is {}x{}, B is {k}x{n}, C is {}x{}",
        a.rows,
        a.cols,
        c.rows,
        c.cols
    );
}

/// Whether an `m x k x n` product is large enough to be worth splitting across threads.
pub(crate) fn worth_parallel(m: usize, k: usize, n: usize) -> bool {
    m.saturating_mul(k).saturating_mul(n) >= PAR_MIN_MACS
}

fn task_count(m: usize, k: usize, n: usize, par: Parallelism) -> usize {
    if !worth_parallel(m, k, n) {
        1
    } else {
        par.tasks()
    }
}

/// `C = beta * C + 1 bias^T`, writing zeros or the bias (not `0 * C`) when `beta == 0`.
fn scale_c(c: MatMut<'_>, beta: f32, bias: Option<&[f32]>) {
    let (rows, cols, rs) = (c.rows, c.cols, c.row_stride);
    for i in 0..rows {
        // SAFETY: row i's `cols` elements lie inside the view (checked at construction); a
        // raw write initialises an element, and C is read only when beta != 0, which an
        // uninitialised view does not allow.
        unsafe {
            let row = c.ptr.add(i * rs);
            for j in 0..cols {
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta * row.add(j).read()
                };
                row.add(j).write(old + bias.map_or(0.0, |b| b[j]));
            }
        }
    }
}
