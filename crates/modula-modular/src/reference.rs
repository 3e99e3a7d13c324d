//! A naive per-row implementation of the modular linear layer: the test oracle for the
//! grouped dispatch. Plain host loops over rows, slots and matrix elements.

use crate::selection::Selection;

/// Shapes and weights of a modular linear layer on the host.
#[derive(Clone, Copy, Debug)]
pub struct NaiveLayer<'a> {
    /// Number of modules `M`.
    pub modules: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Stacked weights, row-major `[M * d_in, d_out]`.
    pub weight: &'a [f32],
    /// Stacked biases, row-major `[M, d_out]`.
    pub bias: &'a [f32],
}

/// Gradients computed by [`NaiveLayer::backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct NaiveGrads {
    /// `dL/dx`, `[n, d_in]`.
    pub dx: Vec<f32>,
    /// `dL/dW`, `[M * d_in, d_out]`.
    pub dw: Vec<f32>,
    /// `dL/db`, `[M, d_out]`.
    pub db: Vec<f32>,
    /// `dL/dgates`, `[n, K]` (zeros without gates).
    pub dgates: Vec<f32>,
}

impl NaiveLayer<'_> {
    /// The distinct modules of row `i` with the slot of their first occurrence.
    fn distinct(sel: &Selection, i: usize) -> Vec<(usize, usize)> {
        let row = sel.row(i);
        (0..row.len())
            .filter(|&s| !row[..s].contains(&row[s]))
            .map(|s| (row[s] as usize, s))
            .collect()
    }

    /// `f_m(x_i)[j] = sum_p x[i, p] W_m[p, j] + b_m[j]`.
    fn module_out(&self, x: &[f32], i: usize, m: usize, j: usize) -> f32 {
        let mut acc = self.bias[m * self.d_out + j] as f64;
        for p in 0..self.d_in {
            acc += x[i * self.d_in + p] as f64
                * self.weight[(m * self.d_in + p) * self.d_out + j] as f64;
        }
        acc as f32
    }

    /// `y[i] = sum over distinct modules m of row i of gate * f_m(x[i])`.
    pub fn forward(&self, x: &[f32], sel: &Selection, gates: Option<&[f32]>) -> Vec<f32> {
        let n = sel.rows();
        let mut y = vec![0.0; n * self.d_out];
        for i in 0..n {
            for (m, s) in Self::distinct(sel, i) {
                let g = gates.map_or(1.0, |g| g[i * sel.k() + s]);
                for j in 0..self.d_out {
                    y[i * self.d_out + j] += g * self.module_out(x, i, m, j);
                }
            }
        }
        y
    }

    /// Gradients of `L` given `dy = dL/dy`.
    pub fn backward(
        &self,
        x: &[f32],
        sel: &Selection,
        gates: Option<&[f32]>,
        dy: &[f32],
    ) -> NaiveGrads {
        let (n, k) = (sel.rows(), sel.k());
        let mut out = NaiveGrads {
            dx: vec![0.0; n * self.d_in],
            dw: vec![0.0; self.weight.len()],
            db: vec![0.0; self.bias.len()],
            dgates: vec![0.0; n * k],
        };
        for i in 0..n {
            for (m, s) in Self::distinct(sel, i) {
                let g = gates.map_or(1.0, |g| g[i * k + s]);
                for j in 0..self.d_out {
                    let d = dy[i * self.d_out + j];
                    out.dgates[i * k + s] += d * self.module_out(x, i, m, j);
                    out.db[m * self.d_out + j] += g * d;
                    for p in 0..self.d_in {
                        out.dw[(m * self.d_in + p) * self.d_out + j] +=
                            g * d * x[i * self.d_in + p];
                        out.dx[i * self.d_in + p] +=
                            g * d * self.weight[(m * self.d_in + p) * self.d_out + j];
                    }
                }
            }
        }
        if gates.is_none() {
            out.dgates.fill(0.0);
        }
        out
    }
}
