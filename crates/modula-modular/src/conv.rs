//! Modular 2-D convolution: M conv modules with one geometry, evaluated by grouped GEMMs over
//! im2col patches.

use modula_nn::{Grads, ParamId, ParamStore};
use modula_tensor::{Backend, GroupedOp, Window2d};
use rand::Rng;

use crate::gating::{gated_sum, gated_sum_backward, pair_gates};
use crate::linear::stacked_glorot;
use crate::selection::Routing;

/// A layer of `M` convolution modules over NHWC images (`[n, H*W*C]` rows, see
/// [`Window2d`]). A routed image is unfolded into `OH*OW` patch rows, so each module's block
/// of patch rows is one GEMM against its `[kh*kw*C, C_out]` weights.
#[derive(Clone, Debug)]
pub struct ModularConv2d {
    /// Stacked weights `[M * kh*kw*C, C_out]`.
    pub weight: ParamId,
    /// Stacked biases `[M, C_out]`.
    pub bias: ParamId,
    /// Number of modules `M`.
    pub modules: usize,
    /// Input geometry, kernel, stride and padding.
    pub window: Window2d,
    /// Output channels.
    pub out_channels: usize,
}

/// What the modular convolution keeps for backward.
#[derive(Debug)]
pub struct ModularConvCache<B: Backend> {
    cols: B::Tensor,
    /// Ungated module outputs in routing order, `[P, OH*OW*C_out]`, and each pair's gate,
    /// `[P, 1]` (only with gates).
    gated: Option<(B::Tensor, B::Tensor)>,
}

impl ModularConv2d {
    /// Registers `{name}.weight` (stacked Glorot over `[M, kh*kw*C, C_out]`) and
    /// `{name}.bias` (zeros).
    ///
    /// # Panics
    /// If `modules == 0`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        modules: usize,
        window: Window2d,
        out_channels: usize,
        rng: &mut impl Rng,
    ) -> Self {
        assert!(modules > 0, "a modular layer needs at least one module");
        let patch = window.patch_len();
        let w = stacked_glorot(rng, modules, patch, out_channels);
        let weight = params.add(
            format!("{name}.weight"),
            backend.upload([modules * patch, out_channels], &w),
        );
        let bias = params.add(
            format!("{name}.bias"),
            backend.zeros([modules, out_channels]),
        );
        ModularConv2d {
            weight,
            bias,
            modules,
            window,
            out_channels,
        }
    }

    /// Output pixels per image, `OH * OW`.
    pub fn out_pixels(&self) -> usize {
        self.window.out_height() * self.window.out_width()
    }

    /// Forward pass: `x [n, H*W*C]` routed by `routing`, returning `[n, OH*OW*C_out]`, the sum
    /// of each image's distinct selected modules, each optionally weighted by a gate
    /// (`gates: [n, K]`, one weight per slot; a module chosen in two slots uses the weight of
    /// the first), as in [`crate::ModularLinear::forward`].
    ///
    /// # Panics
    /// If the shapes disagree with the layer or the routing.
    #[track_caller]
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
    ) -> (B::Tensor, ModularConvCache<B>) {
        assert_eq!(
            b.shape(x),
            [routing.rows(), self.window.in_len()],
            "modular conv input shape"
        );
        assert_eq!(
            routing.modules(),
            self.modules,
            "routing was built for another module count"
        );
        let pix = self.out_pixels();
        let images = b.gather_rows(x, &routing.pair_rows);
        let cols = b.im2col(&images, &self.window);
        // The patches are already in routing order (read through the identity); the GEMM
        // stores each output pixel's module bias with the product.
        let identity: Vec<u32> = (0..(routing.pairs() * pix) as u32).collect();
        let ys = b.grouped_product_rows(
            GroupedOp::XW,
            &cols,
            params.get(self.weight),
            &identity,
            &routing.expanded_offsets(pix),
            Some(params.get(self.bias)),
        );
        let ys = b.reshape(ys, [routing.pairs(), pix * self.out_channels]);
        match gates {
            None => (
                b.segment_sum_rows(&ys, &routing.row_pos, &routing.row_ptr),
                ModularConvCache { cols, gated: None },
            ),
            Some(g) => {
                let pg = pair_gates(b, routing, g);
                let y = gated_sum(b, routing, &ys, &pg);
                (
                    y,
                    ModularConvCache {
                        cols,
                        gated: Some((ys, pg)),
                    },
                )
            }
        }
    }

    /// Backward pass: accumulates weight and bias gradients and returns `dL/dx` and, when the
    /// forward pass had gates, `dL/dgates` (`[n, K]`).
    ///
    /// # Panics
    /// If `dy` is not `[n, OH*OW*C_out]` for the routing.
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: ModularConvCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, Option<B::Tensor>) {
        let pix = self.out_pixels();
        assert_eq!(
            b.shape(dy),
            [routing.rows(), pix * self.out_channels],
            "modular conv output gradient shape"
        );
        let offsets = routing.expanded_offsets(pix);
        let (dys, d_gates) = match &cache.gated {
            None => (b.gather_rows(dy, &routing.pair_rows), None),
            Some((ys, pg)) => {
                let (dys, dg) = gated_sum_backward(b, routing, dy, ys, pg);
                (dys, Some(dg))
            }
        };
        let dys = b.reshape(dys, [routing.pairs() * pix, self.out_channels]);
        let patch = self.window.patch_len();
        let (dw, beta) =
            grads.product_entry(b, self.weight, [self.modules * patch, self.out_channels]);
        b.grouped_matmul(GroupedOp::XtY, &cache.cols, &dys, &offsets, beta, dw);
        let identity: Vec<u32> = (0..(routing.pairs() * pix) as u32).collect();
        grads.accumulate(b, self.bias, &b.segment_sum_rows(&dys, &identity, &offsets));
        // The patches are spent once the weight gradient is done and have the shape of their
        // gradient: overwriting them (beta = 0) saves zeroing a new buffer.
        let mut dcols = cache.cols;
        b.grouped_matmul(
            GroupedOp::XWt,
            &dys,
            params.get(self.weight),
            &offsets,
            0.0,
            &mut dcols,
        );
        let dimages = b.col2im(&dcols, &self.window);
        (
            b.segment_sum_rows(&dimages, &routing.row_pos, &routing.row_ptr),
            d_gates,
        )
    }
}
