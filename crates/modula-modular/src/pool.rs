//! The slow path: any [`Module`] from modula-nn as a module of a modular layer.

use modula_nn::{Ctx, Grads, Module, ParamStore};
use modula_tensor::Backend;

use crate::selection::Routing;

/// A modular layer whose modules are arbitrary [`Module`]s (for example small MLPs). Each
/// module runs once per call on the rows routed to it; outputs are scatter-added per row.
///
/// This trades the grouped GEMM of [`crate::ModularLinear`] for generality: one forward and
/// backward call per non-empty module.
#[derive(Clone, Debug)]
pub struct ModulePool<M> {
    /// The modules, indexed by module id.
    pub modules: Vec<M>,
}

/// Per-module caches of a [`ModulePool`] forward pass.
pub struct PoolCache<B: Backend, M: Module<B>> {
    caches: Vec<Option<M::Cache>>,
    d_in: usize,
}

impl<B: Backend, M: Module<B>> std::fmt::Debug for PoolCache<B, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCache")
            .field("modules", &self.caches.len())
            .finish()
    }
}

impl<M> ModulePool<M> {
    /// Rows routed to module `m`.
    fn rows(routing: &Routing, m: usize) -> &[u32] {
        &routing.pair_rows[routing.offsets[m] as usize..routing.offsets[m + 1] as usize]
    }

    /// Forward pass: `y[i] = sum over the distinct modules m of row i of f_m(x[i])`.
    ///
    /// # Panics
    /// If the routing was built for another module count, or module outputs differ in width.
    #[track_caller]
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        routing: &Routing,
        ctx: &mut Ctx,
    ) -> (B::Tensor, PoolCache<B, M>)
    where
        M: Module<B>,
    {
        assert_eq!(
            routing.modules(),
            self.modules.len(),
            "routing was built for another module count"
        );
        let mut y: Option<B::Tensor> = None;
        let mut caches = Vec::with_capacity(self.modules.len());
        for (m, module) in self.modules.iter().enumerate() {
            let rows = Self::rows(routing, m);
            if rows.is_empty() {
                caches.push(None);
                continue;
            }
            let (y_m, cache) = module.forward(b, params, &b.gather_rows(x, rows), ctx);
            let out = y.get_or_insert_with(|| b.zeros([routing.rows(), b.shape(&y_m)[1]]));
            b.scatter_add_rows(out, &y_m, rows);
            caches.push(Some(cache));
        }
        // With no routed pair at all there is no module output to take the width from.
        let y = y.unwrap_or_else(|| b.zeros([routing.rows(), 0]));
        (
            y,
            PoolCache {
                caches,
                d_in: b.shape(x)[1],
            },
        )
    }

    /// Backward pass: each module's backward on its rows' output gradients; returns `dL/dx`.
    #[track_caller]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        routing: &Routing,
        cache: PoolCache<B, M>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor
    where
        M: Module<B>,
    {
        let mut dx = b.zeros([routing.rows(), cache.d_in]);
        for (m, (module, c)) in self.modules.iter().zip(cache.caches).enumerate() {
            if let Some(c) = c {
                let rows = Self::rows(routing, m);
                let dx_m = module.backward(b, params, c, &b.gather_rows(dy, rows), grads);
                b.scatter_add_rows(&mut dx, &dx_m, rows);
            }
        }
        dx
    }
}
