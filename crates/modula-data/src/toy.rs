//! The generated toy decomposition data set: inputs from a linear partition into regimes, each
//! regime with its own linear map. A modular network must find the regimes without being told
//! them. A variant with a smooth non-linear target ([`ToyTarget::Smooth`]) has no
//! decomposition to find, to measure what forcing one costs. The training task built on it is
//! `modula_tasks::toy`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// What the toy task's target is a function of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToyTarget {
    /// A separate linear map per regime of a linear partition of `x` (a true decomposition).
    #[default]
    Regimes,
    /// A smooth non-linear function of the whole input, the same everywhere:
    /// `y = sum_j a_j sin(v_j . x + c_j)` over [`SMOOTH_WAVES`] random waves, so that no
    /// partition of the input makes it piecewise linear (every example is in regime 0).
    Smooth,
}

/// Sine waves summed by the smooth target ([`ToyTarget::Smooth`]).
pub const SMOOTH_WAVES: usize = 4;

/// Parameters of the generated task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToyConfig {
    /// Input dimension `d`.
    pub dim: usize,
    /// Number of hidden regimes.
    pub regimes: usize,
    /// Standard deviation of the target noise.
    pub noise: f32,
    /// Training examples.
    pub train: usize,
    /// Test examples.
    pub test: usize,
    /// The target: per-regime linear maps, or a smooth function without regimes (which
    /// ignores `regimes`).
    pub target: ToyTarget,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            dim: 4,
            regimes: 4,
            noise: 0.1,
            train: 8192,
            test: 2048,
            target: ToyTarget::Regimes,
        }
    }
}

impl ToyConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The dotted name of the first bad field (`task.dim`, ...) and what to change.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field, problem: &str| Err((field, problem.to_string()));
        if self.dim == 0 {
            return bad("task.dim", "is 0; use at least 1");
        }
        if self.regimes == 0 {
            return bad("task.regimes", "is 0; use at least 1");
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return bad("task.noise", "must be a finite number >= 0");
        }
        if self.train == 0 || self.train > u32::MAX as usize {
            return bad("task.train", "must be between 1 and 2^32 - 1");
        }
        if self.test == 0 {
            return bad("task.test", "is 0; use at least 1");
        }
        Ok(())
    }
}

/// One split of the toy task, host-side and row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ToySplit {
    /// Input dimension.
    pub dim: usize,
    /// Inputs `[n, dim]`.
    pub x: Vec<f32>,
    /// Targets `[n, 1]`.
    pub y: Vec<f32>,
    /// True regime of each example.
    pub regime: Vec<u32>,
}

impl ToySplit {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.regime.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.regime.is_empty()
    }
}

/// The generated task: the hidden regime structure and its train and test splits.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyData {
    /// Training split.
    pub train: ToySplit,
    /// Test split.
    pub test: ToySplit,
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    z as f32
}

impl ToyData {
    /// Generates the task from `seed`: regime directions `u_r`, per-regime weights `w_r` and
    /// biases `b_r`; `x ~ N(0, I)`, `regime(x) = argmax_r u_r . x`,
    /// `y = w_r . x + b_r + noise * N(0, 1)`. The smooth target instead draws, after those,
    /// wave directions `v_j ~ N(0, I / dim)`, amplitudes `a_j ~ N(0, 1)` and phases `c_j`
    /// uniform in `[0, 2 pi)`, and puts every example in regime 0.
    pub fn generate(cfg: &ToyConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = cfg.dim;
        let dirs: Vec<f32> = (0..cfg.regimes * d).map(|_| normal(&mut rng)).collect();
        let weights: Vec<f32> = (0..cfg.regimes * d).map(|_| normal(&mut rng)).collect();
        let biases: Vec<f32> = (0..cfg.regimes).map(|_| normal(&mut rng)).collect();
        // Drawn after the regimes' parameters, so that the regime target's data stays what
        // it was before the smooth target existed.
        let smooth = (cfg.target == ToyTarget::Smooth).then(|| {
            let scale = 1.0 / (d as f32).sqrt();
            let waves: Vec<f32> = (0..SMOOTH_WAVES * d)
                .map(|_| scale * normal(&mut rng))
                .collect();
            let amplitudes: Vec<f32> = (0..SMOOTH_WAVES).map(|_| normal(&mut rng)).collect();
            let phases: Vec<f32> = (0..SMOOTH_WAVES)
                .map(|_| rng.random_range(0.0..std::f32::consts::TAU))
                .collect();
            (waves, amplitudes, phases)
        });
        let split = |n: usize, rng: &mut ChaCha8Rng| {
            let x: Vec<f32> = (0..n * d).map(|_| normal(rng)).collect();
            let mut y = Vec::with_capacity(n);
            let mut regime = Vec::with_capacity(n);
            for row in x.chunks(d) {
                let dot = |v: &[f32]| v.iter().zip(row).map(|(a, b)| a * b).sum::<f32>();
                if let Some((waves, amplitudes, phases)) = &smooth {
                    let value: f32 = (0..SMOOTH_WAVES)
                        .map(|j| {
                            amplitudes[j] * (dot(&waves[j * d..(j + 1) * d]) + phases[j]).sin()
                        })
                        .sum();
                    y.push(value + cfg.noise * normal(rng));
                    regime.push(0);
                    continue;
                }
                let r = (0..cfg.regimes)
                    .max_by(|&a, &c| {
                        dot(&dirs[a * d..(a + 1) * d]).total_cmp(&dot(&dirs[c * d..(c + 1) * d]))
                    })
                    .expect("at least one regime");
                y.push(dot(&weights[r * d..(r + 1) * d]) + biases[r] + cfg.noise * normal(rng));
                regime.push(r as u32);
            }
            ToySplit {
                dim: d,
                x,
                y,
                regime,
            }
        };
        let train = split(cfg.train, &mut rng);
        let test = split(cfg.test, &mut rng);
        ToyData { train, test }
    }

    /// Test mean squared error of the best single linear map `y ~ w . x + b`, fitted by least
    /// squares on the training split: the yardstick a decomposition must beat.
    pub fn linear_baseline_mse(&self) -> f64 {
        let d = self.train.dim + 1;
        let features = |s: &ToySplit, i: usize| -> Vec<f64> {
            let mut f: Vec<f64> = s.x[i * s.dim..(i + 1) * s.dim]
                .iter()
                .map(|&v| v as f64)
                .collect();
            f.push(1.0);
            f
        };
        // Normal equations (X^T X) w = X^T y, solved by Gaussian elimination with pivoting.
        let mut a = vec![vec![0.0f64; d + 1]; d];
        for i in 0..self.train.len() {
            let f = features(&self.train, i);
            for r in 0..d {
                for c in 0..d {
                    a[r][c] += f[r] * f[c];
                }
                a[r][d] += f[r] * self.train.y[i] as f64;
            }
        }
        for col in 0..d {
            let pivot = (col..d)
                .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
                .expect("non-empty");
            a.swap(col, pivot);
            let p = a[col][col];
            if p.abs() < 1e-12 {
                continue;
            }
            let pivot_row = a[col].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != col {
                    let factor = row[col] / p;
                    row.iter_mut()
                        .zip(&pivot_row)
                        .skip(col)
                        .for_each(|(v, pv)| *v -= factor * pv);
                }
            }
        }
        let w: Vec<f64> = (0..d)
            .map(|r| {
                if a[r][r].abs() < 1e-12 {
                    0.0
                } else {
                    a[r][d] / a[r][r]
                }
            })
            .collect();
        let n = self.test.len();
        (0..n)
            .map(|i| {
                let pred: f64 = features(&self.test, i)
                    .iter()
                    .zip(&w)
                    .map(|(f, w)| f * w)
                    .sum();
                (pred - self.test.y[i] as f64).powi(2)
            })
            .sum::<f64>()
            / n as f64
    }
}

/// Fraction of examples whose module is the majority module of their true regime.
///
/// # Panics
/// If the slices differ in length.
#[track_caller]
pub fn purity(modules: &[u32], regimes: &[u32]) -> f64 {
    assert_eq!(modules.len(), regimes.len(), "one module per example");
    let mut counts: std::collections::BTreeMap<(u32, u32), usize> = Default::default();
    for (&m, &r) in modules.iter().zip(regimes) {
        *counts.entry((r, m)).or_default() += 1;
    }
    let mut majority: std::collections::BTreeMap<u32, (usize, u32)> = Default::default();
    for (&(r, m), &c) in &counts {
        let e = majority.entry(r).or_insert((0, m));
        if c > e.0 {
            *e = (c, m);
        }
    }
    let hits: usize = majority.values().map(|&(c, _)| c).sum();
    hits as f64 / modules.len().max(1) as f64
}

/// Draws a random permutation of `0..n` (Fisher-Yates) from `rng`.
pub fn permutation(n: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.random_range(0..=i));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_regime_is_one_linear_map() {
        let cfg = ToyConfig {
            regimes: 1,
            ..ToyConfig::default()
        };
        let data = ToyData::generate(&cfg, 3);
        assert!(data.train.regime.iter().all(|&r| r == 0));
        // The best linear map leaves only the noise (variance 0.01), up to the fit's error.
        let mse = data.linear_baseline_mse();
        assert!(mse < 0.012, "linear MSE {mse} on a single linear regime");
    }

    #[test]
    fn smooth_target_has_no_regimes_and_no_linear_fit() {
        let cfg = ToyConfig {
            target: ToyTarget::Smooth,
            noise: 0.0,
            ..ToyConfig::default()
        };
        let data = ToyData::generate(&cfg, 3);
        assert!(
            data.train
                .regime
                .iter()
                .chain(&data.test.regime)
                .all(|&r| r == 0)
        );
        // Without noise the target is the sum of the waves, so it is bounded by the sum of
        // their amplitudes' magnitudes, which are standard normal: 20 is far outside.
        assert!(data.train.y.iter().all(|y| y.is_finite() && y.abs() < 20.0));
        // A sum of sines over directions of norm about 1 is far from linear over N(0, I):
        // the best linear map explains well under all of its variance.
        let n = data.test.len() as f64;
        let mean = data.test.y.iter().map(|&y| y as f64).sum::<f64>() / n;
        let var = data
            .test
            .y
            .iter()
            .map(|&y| (y as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let mse = data.linear_baseline_mse();
        assert!(mse > 0.2 * var, "linear MSE {mse} against variance {var}");
        // The same seed gives the same data.
        assert_eq!(data, ToyData::generate(&cfg, 3));
    }
}
