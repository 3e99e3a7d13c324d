//! Gate weights on routed module outputs, shared by the modular linear and convolution layers
//! (and the expert-parallel layer of modula-dist, which applies them where a row's pairs come
//! back): each (row, module) pair's output is scaled by its slot's gate before the pairs of a
//! row are summed, as noisy top-k gating needs.

use modula_tensor::Backend;

use crate::selection::Routing;

/// The gate weight of each pair, `[P, 1]`, from per-slot gates `[n, K]` (a module chosen in
/// two slots uses the weight of the first).
///
/// # Panics
/// If `gates` is not `[n, K]` for the routing.
#[track_caller]
pub fn pair_gates<B: Backend>(b: &B, routing: &Routing, gates: &B::Tensor) -> B::Tensor {
    assert_eq!(
        b.shape(gates),
        [routing.rows(), routing.k()],
        "gates must be [n, K]"
    );
    let flat = b.reshape(b.duplicate(gates), [routing.rows() * routing.k(), 1]);
    b.gather_rows(&flat, &routing.pair_slots)
}

/// Sums each row's pair outputs `ys` (`[P, w]`, routing order) scaled by their gates `pg`:
/// the gated layer's output `[n, w]`.
pub fn gated_sum<B: Backend>(
    b: &B,
    routing: &Routing,
    ys: &B::Tensor,
    pg: &B::Tensor,
) -> B::Tensor {
    let mut scaled = b.duplicate(ys);
    b.scale_rows(&mut scaled, pg);
    b.segment_sum_rows(&scaled, &routing.row_pos, &routing.row_ptr)
}

/// Backward of [`gated_sum`] for the output gradient `dy` (`[n, w]`): the pairs' output
/// gradients scaled by their gates, in routing order (`[P, w]`), and the gates' gradient
/// (`[n, K]`).
pub fn gated_sum_backward<B: Backend>(
    b: &B,
    routing: &Routing,
    dy: &B::Tensor,
    ys: &B::Tensor,
    pg: &B::Tensor,
) -> (B::Tensor, B::Tensor) {
    let mut dys = b.gather_rows(dy, &routing.pair_rows);
    let d_pair = b.row_dot(&dys, ys);
    let mut dg = b.zeros([routing.rows() * routing.k(), 1]);
    b.scatter_add_rows(&mut dg, &d_pair, &routing.pair_slots);
    b.scale_rows(&mut dys, pg);
    (dys, b.reshape(dg, [routing.rows(), routing.k()]))
}
