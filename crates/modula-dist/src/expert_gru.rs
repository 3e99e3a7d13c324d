//! Expert parallelism for the modular GRU cell's modules: module `m`'s input-side and
//! hidden-side weights both live on rank `m mod P`, and one time step exchanges each routed
//! row once in each direction.
//!
//! A step of [`ModularGruModules`] runs two modular layers on the same routing, `gx` from
//! `x_t` and `gh` from `h_{t-1}`. Sharded as two [`ExpertLinear`]s, that would be two exchanges
//! out and two back per step; here one plan serves both, `[x_t | h_{t-1}]` travels as one row
//! per pair, the owner runs both grouped products on it, and `[gx | gh]` comes back as one
//! row. The gates are computed on the rows' own rank. The backward pass reverses both
//! exchanges the same way (`[d_gx | d_gh]` out, `[dx | dh]` back).

use modula_modular::{ModularGruModules, Routing};
use modula_nn::{
    Grads, GruGatesCache, ParamStore, gru_gates_backward, gru_gates_forward, gru_gates_from_parts,
    gru_gates_split_grad,
};
use modula_tensor::Backend;

use crate::DistError;
use crate::comm::Comm;
use crate::expert::{Exchange, ExpertLinear, Gated, GatheredLayer};

/// This rank's shard of a [`ModularGruModules`]: the input-side and hidden-side weights of
/// the modules `m` with `m mod P == rank`.
#[derive(Clone, Debug)]
pub struct ExpertGruModules {
    /// Input-side modules `d_in -> 3h` (this rank's shard).
    pub input: ExpertLinear,
    /// Hidden-side modules `h -> 3h` (this rank's shard).
    pub recurrent: ExpertLinear,
}

/// What [`ExpertGruModules::step_backward`] needs from [`ExpertGruModules::step`].
#[derive(Debug)]
pub struct ExpertGruCache<B: Backend> {
    plan: Exchange,
    routing: Routing,
    /// The `x_t` and `h_{t-1}` rows this rank received for its modules.
    received: [B::Tensor; 2],
    /// With gates, what each side's gated backward needs.
    gated: [Gated<B>; 2],
    gates: GruGatesCache<B>,
}

/// What [`ExpertGruModules::step_backward`] returns for this rank's rows.
#[derive(Debug)]
pub struct ExpertGruGrads<B: Backend> {
    /// `dL/dx_t`, `[n, d_in]`.
    pub dx: B::Tensor,
    /// `dL/dh_{t-1}`, `[n, hidden]`.
    pub dh_prev: B::Tensor,
    /// `dL/dgates`, `[n, K]`, when the step had gates.
    pub d_gates: Option<B::Tensor>,
}

impl ExpertGruModules {
    /// This rank's shard of the single-process modules `full` (parameters in `full_params`),
    /// registered in `params` as `{name}.input.*` and `{name}.recurrent.*`, as
    /// [`ModularGruModules::new`] names them.
    ///
    /// # Errors
    /// As [`ExpertLinear::shard`]: fewer modules than ranks, or a device error.
    pub fn shard<B: Backend>(
        b: &B,
        comm: &impl Comm,
        params: &mut ParamStore<B>,
        name: &str,
        full: &ModularGruModules,
        full_params: &ParamStore<B>,
    ) -> Result<Self, DistError> {
        let side = |params: &mut ParamStore<B>, part: &str, layer| {
            ExpertLinear::shard(
                b,
                comm,
                params,
                &format!("{name}.{part}"),
                layer,
                full_params,
            )
        };
        Ok(ExpertGruModules {
            input: side(params, "input", &full.input)?,
            recurrent: side(params, "recurrent", &full.recurrent)?,
        })
    }

    /// Both sides gathered on rank `root` in the single-process layout (input side first);
    /// `None` on the other ranks. Collective.
    ///
    /// # Errors
    /// As [`ExpertLinear::gather`].
    pub fn gather<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        root: usize,
    ) -> Result<Option<[GatheredLayer; 2]>, DistError> {
        let input = self.input.gather(b, comm, params, root)?;
        let recurrent = self.recurrent.gather(b, comm, params, root)?;
        Ok(input.zip(recurrent).map(|(i, r)| [i, r]))
    }

    /// One step for this rank's rows: `h_t [n, hidden]` from `x [n, d_in]` and
    /// `h_prev [n, hidden]` through the modules `routing` selects (built from this rank's
    /// selection over all `M` modules), optionally gate-weighted (`gates: [n, K]`); equal (up
    /// to summation order inside the products) to [`ModularGruModules::forward`]. Collective:
    /// every rank calls it in the same step, also with no rows.
    ///
    /// # Errors
    /// [`DistError::Setup`] if the shapes disagree with the modules or the routing, or `comm`
    /// is not the group of this shard; communication and device errors.
    #[expect(
        clippy::too_many_arguments,
        reason = "the single-process step's arguments and the communicator"
    )]
    pub fn step<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        x: &B::Tensor,
        h_prev: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
    ) -> Result<(B::Tensor, ExpertGruCache<B>), DistError> {
        let (input, recurrent) = (&self.input, &self.recurrent);
        input.check_comm(comm)?;
        recurrent.check_comm(comm)?;
        if (input.modules, input.d_out) != (recurrent.modules, recurrent.d_out)
            || input.d_out != 3 * recurrent.d_in
        {
            return Err(DistError::Setup(format!(
                "expert GRU sides disagree: input side {} modules {} -> {}, hidden side {} \
                 modules {} -> {} (both must have M modules, hidden side h -> 3h)",
                input.modules,
                input.d_in,
                input.d_out,
                recurrent.modules,
                recurrent.d_in,
                recurrent.d_out
            )));
        }
        input.check_input(b, x, routing, gates)?;
        recurrent.check_input(b, h_prev, routing, gates)?;
        let plan = input.plan(comm, routing)?;
        let received = ExpertLinear::dispatch(b, comm, &plan, [x, h_prev], &plan.send_rows)?;
        let yx = input.local_forward(b, params, &plan, &received[0]);
        let yh = recurrent.local_forward(b, params, &plan, &received[1]);
        let [px, ph] = ExpertLinear::collect(b, comm, &plan, [&yx, &yh])?;
        let (gx, gated_x) = ExpertLinear::combine(b, &plan, routing, &px, gates);
        let (gh, gated_h) = ExpertLinear::combine(b, &plan, routing, &ph, gates);
        let (h, cache) = gru_gates_forward(b, &gru_gates_from_parts(b, &gx, &gh), h_prev);
        Ok((
            h,
            ExpertGruCache {
                plan,
                routing: routing.clone(),
                received,
                gated: [gated_x, gated_h],
                gates: cache,
            },
        ))
    }

    /// Backward of [`ExpertGruModules::step`] given `dh = dL/dh_t` (`[n, hidden]`):
    /// accumulates the gradients of this rank's modules (from every rank's rows routed to
    /// them) and returns the gradients of this rank's rows. Collective.
    ///
    /// # Errors
    /// [`DistError::Setup`] if `dh` has the wrong shape; communication and device errors.
    pub fn step_backward<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        cache: ExpertGruCache<B>,
        dh: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<ExpertGruGrads<B>, DistError> {
        let (input, recurrent) = (&self.input, &self.recurrent);
        input.check_comm(comm)?;
        let (plan, routing) = (&cache.plan, &cache.routing);
        if b.shape(dh) != [routing.rows(), recurrent.d_in] {
            return Err(DistError::Setup(format!(
                "expert GRU state gradient is {:?}, expected [{}, {}]",
                b.shape(dh),
                routing.rows(),
                recurrent.d_in
            )));
        }
        let (d_pre, mut dh_prev) = gru_gates_backward(b, &cache.gates, dh);
        let (dgx, dgh) = gru_gates_split_grad(b, &d_pre);
        let [gated_x, gated_h] = &cache.gated;
        let (dys, dgates) = match (
            ExpertLinear::gated_grads(b, routing, gated_x, &dgx),
            ExpertLinear::gated_grads(b, routing, gated_h, &dgh),
        ) {
            (Some((dyx, mut dg)), Some((dyh, dg_h))) => {
                let sent = ExpertLinear::dispatch(b, comm, plan, [&dyx, &dyh], &plan.send_pairs)?;
                b.axpy(1.0, &dg_h, &mut dg);
                (sent, Some(dg))
            }
            (None, None) => (
                ExpertLinear::dispatch(b, comm, plan, [&dgx, &dgh], &plan.send_rows)?,
                None,
            ),
            _ => unreachable!("both sides of a step take the same gates"),
        };
        let [rx, rh] = &cache.received;
        let dxs = input.local_backward(b, params, plan, rx, &dys[0], grads);
        let dhs = recurrent.local_backward(b, params, plan, rh, &dys[1], grads);
        let [px, ph] = ExpertLinear::collect(b, comm, plan, [&dxs, &dhs])?;
        let dx = ExpertLinear::sum_rows(b, plan, routing, &px);
        b.axpy(
            1.0,
            &ExpertLinear::sum_rows(b, plan, routing, &ph),
            &mut dh_prev,
        );
        Ok(ExpertGruGrads {
            dx,
            dh_prev,
            d_gates: dgates,
        })
    }
}
