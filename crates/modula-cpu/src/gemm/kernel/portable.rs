//! The portable microkernel.

use super::{MR, NR, Tile};

/// The portable microkernel compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `t` must satisfy the contract of [`Tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile_avx2(t: &Tile) {
    // SAFETY: forwarded from the caller; inlining compiles `tile` with AVX2 and FMA.
    unsafe { tile(t) }
}

/// A plain-Rust microkernel over the same packed layout, written so that the compiler
/// vectorises the `NR` loop.
///
/// # Safety
/// `t` must satisfy the contract of [`Tile`].
#[inline(always)]
pub(crate) unsafe fn tile(t: &Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    let mut brow = [0.0f32; NR];
    for p in 0..t.kc {
        // SAFETY: depth p of the packed A strip holds MR values, and row p of B holds at
        // least nr readable values.
        let (arow, bsrc) = unsafe {
            (
                std::slice::from_raw_parts(t.a.add(p * MR), MR),
                std::slice::from_raw_parts(t.b.add(p * t.ldb), t.nr),
            )
        };
        brow[..t.nr].copy_from_slice(bsrc);
        for (acc, &av) in acc.iter_mut().zip(arow) {
            for (c, &bv) in acc.iter_mut().zip(&brow) {
                // A separate multiply and add: `mul_add` would call the slow
                // libm `fmaf` on CPUs without FMA.
                *c += av * bv;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(t.mr) {
        for (j, &v) in acc.iter().enumerate().take(t.nr) {
            // SAFETY: row i of the C tile has nr writable values, and a non-null bias nr
            // readable ones. C is written through the pointer (it may not be initialised)
            // and read only when beta != 0 (it may hold NaN or garbage otherwise).
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                let old = if t.beta == 0.0 {
                    0.0
                } else {
                    t.beta * c.read()
                };
                let bias = if t.bias.is_null() {
                    0.0
                } else {
                    t.bias.add(j).read()
                };
                c.write(t.alpha * v + old + bias);
            }
        }
    }
}
