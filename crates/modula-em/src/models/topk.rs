//! Noisy top-k gating (Shazeer et al. 2017) with the importance loss.

use modula_modular::Selection;
use modula_nn::{Ctx, Grads, Init, Linear, Module, ParamStore};
use modula_tensor::{Backend, BackendError, softplus};
use rand::Rng;
use rand_distr::StandardNormal;

/// Noisy top-k gate: `H = x W_g + eps * softplus(x W_noise)`, `eps ~ N(0, 1)` in training
/// (none in evaluation), `G = softmax` over the `k` largest entries of `H` (others zero).
///
/// The gate math is done on the host: it is `O(n M)` work next to the modules' `O(n K d^2)`.
#[derive(Clone, Debug)]
pub struct TopKGate {
    /// Clean logits `x W_g`.
    pub clean: Linear,
    /// Noise scale logits `x W_noise`.
    pub noise: Linear,
    /// Number of modules `M`.
    pub modules: usize,
    /// Modules kept per input `k` (at least 2, or the gate gets no gradient).
    pub k: usize,
}

/// What the gate keeps for backward.
#[derive(Debug)]
pub struct TopKCache<B: Backend> {
    clean: B::Tensor,
    noise: B::Tensor,
    /// Noise scale pre-activations `[n, M]` and the draws `eps` (host).
    noise_pre: Vec<f32>,
    eps: Vec<f32>,
    /// Gate values `[n, k]` and chosen modules (host).
    gates: Vec<f32>,
    selection: Selection,
}

impl<B: Backend> TopKCache<B> {
    /// The modules the gate chose.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }
}

impl TopKGate {
    /// Registers `{name}.clean.*` and `{name}.noise.*`. The noise weights start at zero, so the
    /// initial noise scale is `softplus(0) = ln 2`.
    ///
    /// # Panics
    /// If `k < 2` or `k > modules`.
    #[track_caller]
    pub fn new<B: Backend>(
        b: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        modules: usize,
        k: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(
            k >= 2 && k <= modules,
            "noisy top-k needs 2 <= k <= M, got k = {k}, M = {modules}"
        );
        let clean = Linear::new(
            b,
            params,
            &format!("{name}.clean"),
            d_in,
            modules,
            Init::Glorot,
            rng,
        );
        let noise = Linear::new(
            b,
            params,
            &format!("{name}.noise"),
            d_in,
            modules,
            Init::Glorot,
            rng,
        );
        *params.get_mut(noise.weight) = b.zeros([d_in, modules]);
        TopKGate {
            clean,
            noise,
            modules,
            k,
        }
    }

    /// Computes the selection and gate values `[n, k]` for input `x`; noise is drawn from
    /// `ctx.rng` in training mode only.
    ///
    /// # Errors
    /// Device failures.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Selection, B::Tensor, TopKCache<B>), BackendError> {
        let (clean_t, clean) = self.clean.forward(b, params, x, ctx);
        let (noise_t, noise) = self.noise.forward(b, params, x, ctx);
        let (clean_v, noise_pre) = (b.download(&clean_t)?, b.download(&noise_t)?);
        let n = clean_v.len() / self.modules;
        let eps: Vec<f32> = if ctx.train {
            (0..clean_v.len())
                .map(|_| ctx.rng.sample::<f32, _>(StandardNormal))
                .collect()
        } else {
            vec![0.0; clean_v.len()]
        };
        let mut picks = Vec::with_capacity(n * self.k);
        let mut gates = Vec::with_capacity(n * self.k);
        let mut order: Vec<usize> = Vec::with_capacity(self.modules);
        for i in 0..n {
            let h = |m: usize| {
                clean_v[i * self.modules + m]
                    + eps[i * self.modules + m] * softplus(noise_pre[i * self.modules + m])
            };
            order.clear();
            order.extend(0..self.modules);
            // Largest first; ties broken by module index so the choice is deterministic.
            order.sort_by(|&a, &c| h(c).total_cmp(&h(a)).then(a.cmp(&c)));
            let top = &order[..self.k];
            let max = h(top[0]);
            let z: f32 = top.iter().map(|&m| (h(m) - max).exp()).sum();
            for &m in top {
                picks.push(m as u32);
                gates.push((h(m) - max).exp() / z);
            }
        }
        let selection = Selection::new(self.k, picks);
        let gate_t = b.upload([n, self.k], &gates);
        Ok((
            selection.clone(),
            gate_t,
            TopKCache {
                clean,
                noise,
                noise_pre,
                eps,
                gates,
                selection,
            },
        ))
    }

    /// The importance loss `weight * CV(importance)^2`, where `importance_m` is the batch sum
    /// of module `m`'s gate values, and its gradient with respect to the gate values `[n, k]`.
    pub fn importance_loss<B: Backend>(
        &self,
        cache: &TopKCache<B>,
        weight: f32,
    ) -> (f32, Vec<f32>) {
        let mut imp = vec![0.0f64; self.modules];
        for (&m, &g) in cache.selection.as_slice().iter().zip(&cache.gates) {
            imp[m as usize] += g as f64;
        }
        let mm = self.modules as f64;
        let mean = imp.iter().sum::<f64>() / mm;
        if mean <= 0.0 || self.modules < 2 {
            return (0.0, vec![0.0; cache.gates.len()]);
        }
        let var = imp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / mm;
        let loss = weight as f64 * var / (mean * mean);
        // d(var / mean^2)/d imp_j = 2 (imp_j - mean) / (M mean^2) - 2 var / (M mean^3).
        let d_imp: Vec<f64> = imp
            .iter()
            .map(|&v| {
                weight as f64
                    * (2.0 * (v - mean) / (mm * mean * mean) - 2.0 * var / (mm * mean.powi(3)))
            })
            .collect();
        let d_gates = cache
            .selection
            .as_slice()
            .iter()
            .map(|&m| d_imp[m as usize] as f32)
            .collect();
        (loss as f32, d_gates)
    }

    /// Backward from `d_gates [n, k]` (host) to the gate's parameters and its input `x`.
    ///
    /// # Errors
    /// Device failures.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: TopKCache<B>,
        d_gates: &[f32],
        grads: &mut Grads<B>,
    ) -> Result<B::Tensor, BackendError> {
        let (m, k) = (self.modules, self.k);
        let n = cache.gates.len() / k;
        let mut d_clean = vec![0.0f32; n * m];
        let mut d_noise = vec![0.0f32; n * m];
        for i in 0..n {
            let g = &cache.gates[i * k..(i + 1) * k];
            let dg = &d_gates[i * k..(i + 1) * k];
            // Softmax over the kept entries: dH_j = g_j (dg_j - sum_l g_l dg_l).
            let dot: f32 = g.iter().zip(dg).map(|(a, c)| a * c).sum();
            for s in 0..k {
                let mod_idx = cache.selection.row(i)[s] as usize;
                let dh = g[s] * (dg[s] - dot);
                let at = i * m + mod_idx;
                d_clean[at] = dh;
                d_noise[at] = dh * cache.eps[at] * modula_tensor::sigmoid(cache.noise_pre[at]);
            }
        }
        let mut dx =
            self.clean
                .backward(b, params, cache.clean, &b.upload([n, m], &d_clean), grads);
        let dx_noise =
            self.noise
                .backward(b, params, cache.noise, &b.upload([n, m], &d_noise), grads);
        b.axpy(1.0, &dx_noise, &mut dx);
        Ok(dx)
    }
}
