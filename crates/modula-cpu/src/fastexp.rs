//! A vectorisable `exp` for the softmax over a vocabulary, where libm's scalar `expf` was the
//! largest single cost after the GEMMs (about a fifth of a language-model training step).
//!
//! `exp(x) = 2^k * exp(r)` with `k = round(x / ln 2)` and `r = x - k ln 2` (ln 2 split in two
//! constants, Cody and Waite), `|r| <= ln 2 / 2`, and `exp(r)` by its degree-7 Taylor
//! polynomial (truncation error below 2e-8 relative on that interval). The result is within a
//! few ulps of the exact value for every finite input; below the normal range it returns 0,
//! above it infinity, and NaN stays NaN. Every operation is a branch-free lane operation, so
//! loops over slices compile to SIMD code; the slice functions below are also compiled with
//! AVX-512 and chosen at run time where the CPU has it.

/// `exp(x)` (see the module docs for its accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer in any lane.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let k = t - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // The low mantissa bits of `t` hold k in two's complement: `bits(t) - bits(ROUND) = k`.
    // Building 2^k from them (rather than `k as i32`, whose saturating conversion does not
    // vectorise) keeps the whole function in SIMD lanes.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    let y = p * scale;
    // Out of the normal range the clamped value is wrong: flush to 0 or overflow to infinity.
    // NaN fails both comparisons and propagates through `p`.
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `sum_j exp(row[j] - shift)`, accumulated in 16 independent lanes.
#[inline(always)]
fn sum_exp_lanes(row: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - shift)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `d[j] -= exp(y[j]) * total`: the log-softmax backward's update of one row.
#[inline(always)]
fn sub_scaled_exp_lanes(d: &mut [f32], y: &[f32], total: f32) {
    for (dv, &yv) in d.iter_mut().zip(y) {
        *dv -= exp(yv) * total;
    }
}

/// `out[j] = scale * exp(x[j])`: the softmax part of the cross-entropy gradient.
#[inline(always)]
fn scaled_exp_lanes(out: &mut [f32], x: &[f32], scale: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = scale * exp(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scaled_exp_avx512(out: &mut [f32], x: &[f32], scale: f32) {
    scaled_exp_lanes(out, x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_exp_avx512(row: &[f32], shift: f32) -> f32 {
    sum_exp_lanes(row, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sub_scaled_exp_avx512(d: &mut [f32], y: &[f32], total: f32) {
    sub_scaled_exp_lanes(d, y, total)
}

/// `sum_j exp(row[j] - shift)`.
pub fn sum_exp(row: &[f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { sum_exp_avx512(row, shift) };
    }
    sum_exp_lanes(row, shift)
}

/// `out[j] = scale * exp(x[j])` for every `j` (the slices must have equal lengths).
pub fn scaled_exp_into(out: &mut [f32], x: &[f32], scale: f32) {
    debug_assert_eq!(out.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { scaled_exp_avx512(out, x, scale) };
    }
    scaled_exp_lanes(out, x, scale)
}

/// `d[j] -= exp(y[j]) * total` for every `j` (the slices must have equal lengths).
pub fn sub_scaled_exp(d: &mut [f32], y: &[f32], total: f32) {
    debug_assert_eq!(d.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { sub_scaled_exp_avx512(d, y, total) };
    }
    sub_scaled_exp_lanes(d, y, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel_err(x: f32) -> f64 {
        let exact = (x as f64).exp();
        ((exp(x) as f64) - exact).abs() / exact
    }

    proptest! {
        #[test]
        fn within_a_few_ulps_over_the_normal_range(x in -87.0f32..88.0) {
            prop_assert!(rel_err(x) < 5e-7, "exp({x}) = {} vs {}", exp(x), (x as f64).exp());
        }

        #[test]
        fn slice_forms_match_the_scalar_form(v in proptest::collection::vec(-30.0f32..5.0, 0..70), shift in -3.0f32..3.0) {
            let scalar: f64 = v.iter().map(|&x| exp(x - shift) as f64).sum();
            prop_assert!((sum_exp(&v, shift) as f64 - scalar).abs() <= 1e-5 * scalar.max(1e-30));
            let mut d = vec![1.0f32; v.len()];
            sub_scaled_exp(&mut d, &v, 0.5);
            for (dv, &x) in d.iter().zip(&v) {
                prop_assert_eq!(*dv, 1.0 - exp(x) * 0.5);
            }
            let mut o = vec![0.0f32; v.len()];
            scaled_exp_into(&mut o, &v, -0.25);
            for (ov, &x) in o.iter().zip(&v) {
                prop_assert_eq!(*ov, -0.25 * exp(x));
            }
        }
    }

    #[test]
    fn edges_of_the_range() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        for x in [-87.0f32, -50.5, -1e-3, 1e-7, 1.0, 10.0, 88.0] {
            assert!(rel_err(x) < 5e-7, "exp({x})");
        }
    }
}
