//! Gated recurrent unit: the gate nonlinearity, a single cell, and a cell unrolled through time.
//!
//! The formulation is PyTorch's (`torch.nn.GRUCell`), with gate blocks ordered `r, z, n`:
//!
//! ```text
//! gx = x W_x + b_x                      [batch, 3h]
//! gh = h W_h + b_h                      [batch, 3h]
//! r  = sigmoid(gx_r + gh_r)
//! z  = sigmoid(gx_z + gh_z)
//! n  = tanh(gx_n + r * gh_n)
//! h' = (1 - z) * n + z * h
//! ```
//!
//! The nonlinearity is factored out as [`gru_gates_forward`] / [`gru_gates_backward`], which
//! take the four pre-activation blocks `[a_r, a_z, a_nx, a_nh]` (`a_r = gx_r + gh_r`,
//! `a_z = gx_z + gh_z`, `a_nx = gx_n`, `a_nh = gh_n`) as one `[batch, 4h]` tensor. The
//! candidate's input and hidden parts must stay separate because the reset gate multiplies only
//! the hidden part. Any pair of layers that produces `gx` and `gh` (the dense products of
//! [`GruCell`], or modular layers on `x` and `h`) assembles them with [`gru_gates_from_parts`]
//! and reuses the same gate code.

use modula_tensor::{Backend, BinaryOp, ReduceOp, Transpose, UnaryOp};
use rand::Rng;

use crate::init::Init;
use crate::param::{Grads, ParamId, ParamStore};

/// Columns `[col, col + width)` of `x` as a new tensor.
fn slice_cols<B: Backend>(b: &B, x: &B::Tensor, col: usize, width: usize) -> B::Tensor {
    let mut out = b.zeros([b.shape(x)[0], width]);
    b.copy_cols(x, col, &mut out, 0, width, false);
    out
}

/// What [`gru_gates_backward`] needs from [`gru_gates_forward`].
#[derive(Debug)]
pub struct GruGatesCache<B: Backend> {
    a_r: B::Tensor,
    a_z: B::Tensor,
    a_nh: B::Tensor,
    /// `a_nx + r * a_nh`, the candidate's pre-activation.
    a_n: B::Tensor,
    r: B::Tensor,
    z: B::Tensor,
    n: B::Tensor,
    h_prev: B::Tensor,
}

impl<B: Backend> GruGatesCache<B> {
    /// The previous hidden state the step started from, `[batch, h]`.
    pub fn h_prev(&self) -> &B::Tensor {
        &self.h_prev
    }
}

/// The GRU gate nonlinearity: from pre-activations `gates [batch, 4h]`, laid out as
/// `[a_r, a_z, a_nx, a_nh]`, and the previous state `h_prev [batch, h]`, computes
/// `h' = (1 - z) * n + z * h_prev` with `r = sigmoid(a_r)`, `z = sigmoid(a_z)`,
/// `n = tanh(a_nx + r * a_nh)`.
///
/// Returns `h' [batch, h]` and the cache for [`gru_gates_backward`].
///
/// # Panics
/// If `h_prev` is not `[batch, h]` for `gates: [batch, 4h]`.
#[track_caller]
pub fn gru_gates_forward<B: Backend>(
    b: &B,
    gates: &B::Tensor,
    h_prev: &B::Tensor,
) -> (B::Tensor, GruGatesCache<B>) {
    let [n_rows, cols] = b.shape(gates);
    let h = b.shape(h_prev)[1];
    assert_eq!(
        [n_rows, cols],
        [b.shape(h_prev)[0], 4 * h],
        "gru_gates_forward: gates must be [batch, 4h] for h_prev [batch, h] = {:?}",
        b.shape(h_prev)
    );
    let a_r = slice_cols(b, gates, 0, h);
    let a_z = slice_cols(b, gates, h, h);
    let a_nx = slice_cols(b, gates, 2 * h, h);
    let a_nh = slice_cols(b, gates, 3 * h, h);
    let r = b.unary(UnaryOp::Sigmoid, &a_r);
    let z = b.unary(UnaryOp::Sigmoid, &a_z);
    let a_n = b.binary(BinaryOp::Add, &a_nx, &b.binary(BinaryOp::Mul, &r, &a_nh));
    let n = b.unary(UnaryOp::Tanh, &a_n);
    // h' = n + z * (h_prev - n): the same value as (1 - z) * n + z * h_prev, with one fewer op.
    let z_diff = b.binary(BinaryOp::Mul, &z, &b.binary(BinaryOp::Sub, h_prev, &n));
    let h_next = b.binary(BinaryOp::Add, &n, &z_diff);
    let cache = GruGatesCache {
        a_r,
        a_z,
        a_nh,
        a_n,
        r,
        z,
        n,
        h_prev: b.duplicate(h_prev),
    };
    (h_next, cache)
}

/// Gradient of [`gru_gates_forward`]: given `dh = dL/dh' [batch, h]`, returns
/// `(d_gates [batch, 4h], d_h_prev [batch, h])`, where `d_h_prev` is only the direct path
/// `dh * z`; the path through the hidden pre-activations is the caller's, since the caller
/// computed them.
///
/// # Panics
/// If `dh` is not `[batch, h]`.
#[track_caller]
pub fn gru_gates_backward<B: Backend>(
    b: &B,
    cache: &GruGatesCache<B>,
    dh: &B::Tensor,
) -> (B::Tensor, B::Tensor) {
    let shape = b.shape(&cache.h_prev);
    assert_eq!(
        b.shape(dh),
        shape,
        "gru_gates_backward: dh must be [batch, h]"
    );
    let h = shape[1];
    // h' = (1 - z) n + z h_prev, so dn = dh (1 - z), dz = dh (h_prev - n), dh_prev = dh z.
    let dh_prev = b.binary(BinaryOp::Mul, dh, &cache.z);
    let dn = b.binary(BinaryOp::Sub, dh, &dh_prev);
    let dz = b.binary(
        BinaryOp::Mul,
        dh,
        &b.binary(BinaryOp::Sub, &cache.h_prev, &cache.n),
    );
    let da_n = b.unary_backward(UnaryOp::Tanh, &cache.a_n, &cache.n, &dn);
    // a_n = a_nx + r * a_nh.
    let da_nh = b.binary(BinaryOp::Mul, &da_n, &cache.r);
    let dr = b.binary(BinaryOp::Mul, &da_n, &cache.a_nh);
    let da_r = b.unary_backward(UnaryOp::Sigmoid, &cache.a_r, &cache.r, &dr);
    let da_z = b.unary_backward(UnaryOp::Sigmoid, &cache.a_z, &cache.z, &dz);
    let mut d_gates = b.zeros([shape[0], 4 * h]);
    for (i, block) in [&da_r, &da_z, &da_n, &da_nh].into_iter().enumerate() {
        b.copy_cols(block, 0, &mut d_gates, i * h, h, false);
    }
    (d_gates, dh_prev)
}

/// Assembles the gate pre-activations `[a_r, a_z, a_nx, a_nh]` of [`gru_gates_forward`] from
/// an input-side `gx = [gx_r, gx_z, gx_n]` and a hidden-side `gh = [gh_r, gh_z, gh_n]` (each
/// `[batch, 3h]`): `[gx_r + gh_r, gx_z + gh_z, gx_n, gh_n]`.
///
/// # Panics
/// If `gx` and `gh` differ in shape or their width is not a multiple of 3.
#[track_caller]
pub fn gru_gates_from_parts<B: Backend>(b: &B, gx: &B::Tensor, gh: &B::Tensor) -> B::Tensor {
    let [n, h3] = b.shape(gx);
    assert!(
        b.shape(gh) == [n, h3] && h3 % 3 == 0,
        "gru_gates_from_parts: gx and gh must both be [batch, 3h]"
    );
    let h = h3 / 3;
    let mut gates = b.zeros([n, 4 * h]);
    b.copy_cols(gx, 0, &mut gates, 0, 3 * h, false);
    b.copy_cols(gh, 0, &mut gates, 0, 2 * h, true);
    b.copy_cols(gh, 2 * h, &mut gates, 3 * h, h, false);
    gates
}

/// The gradient of [`gru_gates_from_parts`]: splits `d_gates [batch, 4h]` into
/// `(d_gx, d_gh)`, each `[batch, 3h]`. The first three blocks are exactly `gx`'s; `gh`'s are
/// blocks r, z and the fourth.
///
/// # Panics
/// If the width of `d_gates` is not a multiple of 4.
#[track_caller]
pub fn gru_gates_split_grad<B: Backend>(b: &B, d_gates: &B::Tensor) -> (B::Tensor, B::Tensor) {
    let [n, h4] = b.shape(d_gates);
    assert!(
        h4 % 4 == 0,
        "gru_gates_split_grad: d_gates must be [batch, 4h]"
    );
    let h = h4 / 4;
    let dgx = slice_cols(b, d_gates, 0, 3 * h);
    let mut dgh = b.zeros([n, 3 * h]);
    b.copy_cols(d_gates, 0, &mut dgh, 0, 2 * h, false);
    b.copy_cols(d_gates, 3 * h, &mut dgh, 2 * h, h, false);
    (dgx, dgh)
}

/// One GRU step with dense weights, in PyTorch's formulation (`torch.nn.GRUCell`):
///
/// ```text
/// gx = x W_x + b_x,  gh = h W_h + b_h       (each [batch, 3h], blocks r, z, n)
/// r  = sigmoid(gx_r + gh_r)
/// z  = sigmoid(gx_z + gh_z)
/// n  = tanh(gx_n + r * gh_n)
/// h' = (1 - z) * n + z * h
/// ```
///
/// Parameters: `W_x [d_in, 3h]`, `b_x [1, 3h]`, `W_h [h, 3h]`, `b_h [1, 3h]`. Two biases
/// rather than one because `b_h`'s candidate block sits inside the reset gate's product. The
/// cell assembles the pre-activations `[a_r, a_z, a_nx, a_nh]` and applies
/// [`gru_gates_forward`], the nonlinearity shared with other GRU variants.
#[derive(Clone, Debug)]
pub struct GruCell {
    /// Input weight `[d_in, 3h]`.
    pub w_x: ParamId,
    /// Input bias `[1, 3h]`.
    pub b_x: ParamId,
    /// Recurrent weight `[h, 3h]`.
    pub w_h: ParamId,
    /// Recurrent bias `[1, 3h]`.
    pub b_h: ParamId,
    /// Input width.
    pub d_in: usize,
    /// Hidden width `h`.
    pub hidden: usize,
}

/// What [`GruCell::step_backward`] needs from [`GruCell::step`].
#[derive(Debug)]
pub struct GruCellCache<B: Backend> {
    x: B::Tensor,
    gates: GruGatesCache<B>,
}

impl GruCell {
    /// Registers `{name}.w_x`, `{name}.w_h` (initialised by `init`, with fans `(d_in, h)` and
    /// `(h, h)`, those of one gate block) and `{name}.b_x`, `{name}.b_h` (zeros).
    ///
    /// # Panics
    /// If one of the parameter names is already registered in `params`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        hidden: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        let h3 = 3 * hidden;
        let wx = init.sample(rng, d_in, hidden, d_in * h3);
        let wh = init.sample(rng, hidden, hidden, hidden * h3);
        let w_x = params.add(format!("{name}.w_x"), backend.upload([d_in, h3], &wx));
        let b_x = params.add(format!("{name}.b_x"), backend.zeros([1, h3]));
        let w_h = params.add(format!("{name}.w_h"), backend.upload([hidden, h3], &wh));
        let b_h = params.add(format!("{name}.b_h"), backend.zeros([1, h3]));
        GruCell {
            w_x,
            b_x,
            w_h,
            b_h,
            d_in,
            hidden,
        }
    }

    /// One step: from input `x [batch, d_in]` and state `h_prev [batch, h]`, the next state
    /// `[batch, h]` and the cache for [`GruCell::step_backward`].
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]` or `h_prev` not `[batch, h]`.
    #[track_caller]
    pub fn step<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        x: &B::Tensor,
        h_prev: &B::Tensor,
    ) -> (B::Tensor, GruCellCache<B>) {
        let n = b.shape(x)[0];
        let h = self.hidden;
        assert_eq!(
            b.shape(x),
            [n, self.d_in],
            "GruCell::step: x must be [batch, d_in]"
        );
        assert_eq!(
            b.shape(h_prev),
            [n, h],
            "GruCell::step: h_prev must be [batch, hidden]"
        );
        let gx = affine(b, x, params.get(self.w_x), params.get(self.b_x));
        let gh = affine(b, h_prev, params.get(self.w_h), params.get(self.b_h));
        let (h_next, gates) = gru_gates_forward(b, &gru_gates_from_parts(b, &gx, &gh), h_prev);
        let cache = GruCellCache {
            x: b.duplicate(x),
            gates,
        };
        (h_next, cache)
    }

    /// Backward of one [`GruCell::step`]: given `dh = dL/dh'`, adds the parameter gradients
    /// into `grads` and returns `(dx, dh_prev)`.
    ///
    /// # Panics
    /// If `dh` is not `[batch, h]`.
    #[track_caller]
    pub fn step_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: GruCellCache<B>,
        dh: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> (B::Tensor, B::Tensor) {
        let h = self.hidden;
        let (d_gates, mut dh_prev) = gru_gates_backward(b, &cache.gates, dh);
        let n = b.shape(&d_gates)[0];
        let (dgx, dgh) = gru_gates_split_grad(b, &d_gates);

        let dwx = grads.entry(b, self.w_x, [self.d_in, 3 * h]);
        b.matmul(1.0, &cache.x, Transpose::Yes, &dgx, Transpose::No, 1.0, dwx);
        grads.accumulate(b, self.b_x, &b.reduce_cols(ReduceOp::Sum, &dgx));
        let dwh = grads.entry(b, self.w_h, [h, 3 * h]);
        let h_prev = cache.gates.h_prev();
        b.matmul(1.0, h_prev, Transpose::Yes, &dgh, Transpose::No, 1.0, dwh);
        grads.accumulate(b, self.b_h, &b.reduce_cols(ReduceOp::Sum, &dgh));

        let mut dx = b.zeros([n, self.d_in]);
        let wx = params.get(self.w_x);
        b.matmul(1.0, &dgx, Transpose::No, wx, Transpose::Yes, 0.0, &mut dx);
        let wh = params.get(self.w_h);
        b.matmul(
            1.0,
            &dgh,
            Transpose::No,
            wh,
            Transpose::Yes,
            1.0,
            &mut dh_prev,
        );
        (dx, dh_prev)
    }
}

/// `x W + bias`.
fn affine<B: Backend>(b: &B, x: &B::Tensor, w: &B::Tensor, bias: &B::Tensor) -> B::Tensor {
    let mut y = b.zeros([b.shape(x)[0], b.shape(w)[1]]);
    b.matmul(1.0, x, Transpose::No, w, Transpose::No, 0.0, &mut y);
    b.add_row(&mut y, bias);
    y
}

/// A [`GruCell`] unrolled over a window of time steps, with backpropagation through time.
///
/// Truncated BPTT over a long sequence: split it into windows, run
/// [`Gru::forward_seq`] on each and pass the last hidden state of one window (detached: a
/// [`Backend::duplicate`] of it) as `h0` of the next. The forward values are then exactly those
/// of one long unroll, while gradients stop at window boundaries: the `dh0` that
/// [`Gru::backward_seq`] returns for a carried state is simply dropped.
///
/// ```
/// use modula_nn::{Grads, Gru, Init, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// use rand::SeedableRng;
/// let cpu = Cpu::with_threads(1);
/// let mut params = ParamStore::new();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let gru = Gru::new(&cpu, &mut params, "gru", 3, 5, Init::Glorot, &mut rng);
/// let mut h = cpu.zeros([2, 5]);
/// for _window in 0..2 {
///     let xs: Vec<_> = (0..4).map(|_| cpu.upload([2, 3], &[0.1; 6])).collect();
///     let (hs, cache) = gru.forward_seq(&cpu, &params, &xs, &h);
///     let dhs: Vec<_> = hs.iter().map(|_| cpu.upload([2, 5], &[1.0; 10])).collect();
///     let mut grads = Grads::new();
///     let (dxs, _dh0) = gru.backward_seq(&cpu, &params, cache, &dhs, None, &mut grads);
///     assert_eq!(dxs.len(), 4);
///     h = cpu.duplicate(hs.last().unwrap()); // carried into the next window, detached
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Gru {
    /// The cell applied at every step (its parameters are shared across time).
    pub cell: GruCell,
}

/// What [`Gru::backward_seq`] needs from [`Gru::forward_seq`]: one cell cache per step.
#[derive(Debug)]
pub struct GruSeqCache<B: Backend> {
    steps: Vec<GruCellCache<B>>,
    h0_shape: [usize; 2],
}

impl Gru {
    /// A GRU with a new cell; see [`GruCell::new`] for the parameters it registers.
    ///
    /// # Panics
    /// If one of the parameter names is already registered in `params`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        d_in: usize,
        hidden: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        Gru {
            cell: GruCell::new(backend, params, name, d_in, hidden, init, rng),
        }
    }

    /// Runs the cell over `xs` (`T` tensors `[batch, d_in]`) from `h0 [batch, h]`, returning
    /// the `T` hidden states `h_1..h_T` and the cache for [`Gru::backward_seq`]. With `T = 0`
    /// it returns no states.
    ///
    /// # Panics
    /// If a shape does not match (as [`GruCell::step`]).
    #[track_caller]
    pub fn forward_seq<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        xs: &[B::Tensor],
        h0: &B::Tensor,
    ) -> (Vec<B::Tensor>, GruSeqCache<B>) {
        let mut hs: Vec<B::Tensor> = Vec::with_capacity(xs.len());
        let mut steps = Vec::with_capacity(xs.len());
        for x in xs {
            let h_prev = hs.last().unwrap_or(h0);
            let (h, cache) = self.cell.step(b, params, x, h_prev);
            hs.push(h);
            steps.push(cache);
        }
        let cache = GruSeqCache {
            steps,
            h0_shape: b.shape(h0),
        };
        (hs, cache)
    }

    /// Backpropagation through time. `dhs` holds the loss gradient with respect to each
    /// returned state `h_t` (`T` tensors `[batch, h]`, or none when only the last state feeds a
    /// loss); `dh_last` is an extra gradient on `h_T` (for example from a head on the final
    /// state). Adds the parameter gradients, summed over time, into `grads` and returns
    /// `(dxs, dh0)`: the gradient for every input and for the initial state.
    ///
    /// # Panics
    /// If `dhs` is neither empty nor of length `T`, or a gradient is not `[batch, h]`.
    #[track_caller]
    pub fn backward_seq<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        cache: GruSeqCache<B>,
        dhs: &[B::Tensor],
        dh_last: Option<&B::Tensor>,
        grads: &mut Grads<B>,
    ) -> (Vec<B::Tensor>, B::Tensor) {
        let steps = cache.steps.len();
        assert!(
            dhs.is_empty() || dhs.len() == steps,
            "Gru::backward_seq: got {} state gradients for {steps} steps",
            dhs.len()
        );
        // The gradient flowing into h_t from later steps (and from dh_last at t = T).
        let mut carry = match dh_last {
            Some(d) => {
                assert_eq!(
                    b.shape(d),
                    cache.h0_shape,
                    "Gru::backward_seq: dh_last must be [batch, hidden]"
                );
                b.duplicate(d)
            }
            None => b.zeros(cache.h0_shape),
        };
        let mut dxs = Vec::with_capacity(steps);
        for (t, step) in cache.steps.into_iter().enumerate().rev() {
            if let Some(d) = dhs.get(t) {
                b.axpy(1.0, d, &mut carry);
            }
            let (dx, dh_prev) = self.cell.step_backward(b, params, step, &carry, grads);
            dxs.push(dx);
            carry = dh_prev;
        }
        dxs.reverse();
        (dxs, carry)
    }
}
