//! The microkernels: one call computes an `MR x NR` tile of `C` from packed strips
//! ([`Tile`]); [`Kernel`] picks the fastest form this CPU runs.

/// The AVX-512 kernels: the register tile, dot products of rows, the `A W^T` tile and the
/// vector transpose.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;
/// The portable kernel, also compiled for AVX2 and FMA.
mod portable;

/// Rows of the register tile.
pub(super) const MR: usize = 12;
/// Columns of the register tile (two 16-lane vectors).
pub(super) const NR: usize = 32;

/// Arguments of one microkernel call: `C[mr x nr] = alpha * A * B + beta * C + 1 bias^T`,
/// where `A` is a packed `kc x MR` strip, `B` holds `kc` rows of at least `nr` readable values,
/// `ldb` apart, and `bias` is null (none) or `nr` values. With `beta == 0`, C is not read.
pub(super) struct Tile {
    pub(super) kc: usize,
    pub(super) a: *const f32,
    pub(super) b: *const f32,
    pub(super) ldb: usize,
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
    pub(super) mr: usize,
    pub(super) nr: usize,
    pub(super) alpha: f32,
    pub(super) beta: f32,
    pub(super) bias: *const f32,
}

/// The microkernel chosen for this CPU.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// The environment variable that restricts the GEMM to its portable kernel and packing
/// (value `portable`), read once per process: the test suite runs itself again with it, so
/// that the fallback is covered on machines with AVX-512 too.
pub const KERNEL_VAR: &str = "MODULA_GEMM_KERNEL";

impl Kernel {
    /// The fastest kernel this CPU runs, or the portable one under [`KERNEL_VAR`].
    pub(super) fn detect() -> Self {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            if std::env::var(KERNEL_VAR).is_ok_and(|v| v == "portable") {
                return Kernel::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    return Kernel::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Kernel::Avx2;
                }
            }
            Kernel::Portable
        })
    }

    /// # Safety
    /// The pointers of `t` must address the memory described on [`Tile`], and the kernel
    /// variant must be supported by the CPU (as [`Kernel::detect`] guarantees).
    pub(super) unsafe fn run(self, t: &Tile) {
        match self {
            // SAFETY: detect() only returns Avx512 when the CPU supports AVX-512F; the caller
            // guarantees the pointers.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::tile(t) },
            // SAFETY: detect() only returns Avx2 when the CPU supports AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { portable::tile_avx2(t) },
            // SAFETY: the caller guarantees the pointers.
            Kernel::Portable => unsafe { portable::tile(t) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every kernel this CPU can run computes the same tiles as a plain loop, for every edge
    /// size, with and without reading C (NaN in C must not leak through when beta == 0).
    #[test]
    fn kernels_agree_with_a_plain_loop() {
        #[allow(unused_mut)] // Only x86-64 adds vector kernels.
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for kc in [1, 3, 4, 17] {
            let a: Vec<f32> = (0..kc * MR).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ldb = NR + 5;
            let b: Vec<f32> = (0..kc * ldb).map(|_| rng.random_range(-1.0..1.0)).collect();
            for mr in 1..=MR {
                for nr in [1, 15, 16, 17, 31, 32] {
                    for (alpha, beta, with_bias) in [
                        (1.0f32, 0.0f32, false),
                        (-0.5, 2.0, false),
                        (0.5, 0.0, true),
                    ] {
                        let bias: Vec<f32> = (0..NR).map(|j| j as f32 * 0.25 - 3.0).collect();
                        let ldc = NR + 3;
                        let c0: Vec<f32> = (0..MR * ldc)
                            .map(|_| {
                                if beta == 0.0 {
                                    f32::NAN
                                } else {
                                    rng.random_range(-1.0..1.0)
                                }
                            })
                            .collect();
                        let mut want = c0.clone();
                        for i in 0..mr {
                            for j in 0..nr {
                                let dot: f32 =
                                    (0..kc).map(|p| a[p * MR + i] * b[p * ldb + j]).sum();
                                let old = if beta == 0.0 {
                                    0.0
                                } else {
                                    beta * c0[i * ldc + j]
                                };
                                let b = if with_bias { bias[j] } else { 0.0 };
                                want[i * ldc + j] = alpha * dot + old + b;
                            }
                        }
                        for &kern in &kernels {
                            let mut c = c0.clone();
                            let tile = Tile {
                                kc,
                                a: a.as_ptr(),
                                b: b.as_ptr(),
                                ldb,
                                c: c.as_mut_ptr(),
                                ldc,
                                mr,
                                nr,
                                alpha,
                                beta,
                                bias: if with_bias {
                                    bias.as_ptr()
                                } else {
                                    std::ptr::null()
                                },
                            };
                            // SAFETY: a holds kc x MR values, b holds kc rows of ldb >= nr
                            // values, c holds MR rows of ldc >= nr values; the kernel list only
                            // has variants this CPU supports.
                            unsafe { kern.run(&tile) };
                            for (idx, (g, w)) in c.iter().zip(&want).enumerate() {
                                let (i, j) = (idx / ldc, idx % ldc);
                                if i < mr && j < nr {
                                    assert!(
                                        (g - w).abs() <= 1e-5 * (kc as f32 + 1.0),
                                        "{kern:?} kc={kc} mr={mr} nr={nr} ({i},{j}): {g} vs {w}"
                                    );
                                } else {
                                    assert!(
                                        g.to_bits() == w.to_bits(),
                                        "{kern:?} wrote outside its tile at ({i},{j})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
