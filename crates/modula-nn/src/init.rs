//! Seeded weight initialisation (Glorot/Xavier and He/Kaiming).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// `n` values from the Glorot-uniform distribution `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`,
/// which keeps activation variance roughly constant through tanh/sigmoid layers.
pub fn glorot_uniform(rng: &mut impl Rng, fan_in: usize, fan_out: usize, n: usize) -> Vec<f32> {
    let a = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
    (0..n).map(|_| rng.random_range(-a..=a)).collect()
}

/// `n` values from the He-normal distribution `N(0, 2 / fan_in)`, suited to ReLU layers.
pub fn he_normal(rng: &mut impl Rng, fan_in: usize, n: usize) -> Vec<f32> {
    normal(rng, (2.0 / fan_in.max(1) as f32).sqrt(), n)
}

/// `n` values from the normal distribution `N(0, std^2)`, the usual choice for embedding
/// tables, whose rows are looked up rather than summed so fan-based scaling does not apply.
pub fn normal(rng: &mut impl Rng, std: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            std * z as f32
        })
        .collect()
}

/// Weight initialisation scheme of a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Init {
    /// Glorot-uniform (the default; right for linear and tanh/sigmoid layers).
    #[default]
    Glorot,
    /// Glorot-uniform with its limit multiplied by `scale` (for example to start a dense layer
    /// at the scale of one module of a stacked modular initialisation).
    ScaledGlorot {
        /// The factor on Glorot's limit.
        scale: f32,
    },
    /// He-normal (for layers followed by ReLU).
    He,
    /// Normal with a fixed standard deviation, ignoring the fans (for example
    /// `Init::Normal { std: 0.1 }` for embeddings).
    Normal {
        /// Standard deviation.
        std: f32,
    },
}

impl Init {
    /// `n` initial values for a weight with the given fans.
    pub fn sample(self, rng: &mut impl Rng, fan_in: usize, fan_out: usize, n: usize) -> Vec<f32> {
        match self {
            Init::Glorot => glorot_uniform(rng, fan_in, fan_out, n),
            Init::ScaledGlorot { scale } => glorot_uniform(rng, fan_in, fan_out, n)
                .into_iter()
                .map(|v| v * scale)
                .collect(),
            Init::He => he_normal(rng, fan_in, n),
            Init::Normal { std } => normal(rng, std, n),
        }
    }
}
