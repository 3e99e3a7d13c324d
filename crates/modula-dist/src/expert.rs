//! Expert parallelism for the modular linear layer: the modules of a layer are sharded across
//! ranks and the routed rows travel to their modules' owners by all-to-all.
//!
//! Module `m` lives on rank `m mod P`, as local module `m / P` there. Each rank routes its own
//! rows as the single-process layer does ([`Routing`]); then
//!
//! 1. the per-module row counts go to the modules' owners (an all-to-all-v of `u32`s whose
//!    sizes every rank knows: one count per module of the receiving rank),
//! 2. the routed input rows follow (an all-to-all-v of `f32` rows, grouped by destination
//!    rank, then by module),
//! 3. each rank runs one grouped product over the rows it received for its own modules,
//!    reading them through an index (no copy into module order), and
//! 4. the per-pair outputs go back to the rows' owners (a second all-to-all-v), which sum each
//!    row's pairs exactly as the single-process layer does.
//!
//! The backward pass reverses both exchanges: the output gradients of each pair go to the
//! module's owner, which accumulates its modules' weight gradients (they never leave it) and
//! sends the pairs' input gradients back to the rows' owners.

use modula_modular::{ModularLinear, Routing, gated_sum, gated_sum_backward, pair_gates};
use modula_nn::{Grads, ParamId, ParamStore};
use modula_tensor::{Backend, GroupedOp};

use crate::DistError;
use crate::comm::Comm;

/// Number of the `modules` modules that rank `rank` of `ranks` owns (`m mod ranks == rank`).
pub fn local_modules(modules: usize, ranks: usize, rank: usize) -> usize {
    modules.saturating_sub(rank).div_ceil(ranks)
}

/// The shard of a [`ModularLinear`] that one rank holds: the stacked weights and biases of the
/// modules `m` with `m mod P == rank`, in increasing `m` (local module `l` is module
/// `l * P + rank`).
#[derive(Clone, Debug)]
pub struct ExpertLinear {
    /// Stacked weights of the local modules, `[M_local * d_in, d_out]`.
    pub weight: ParamId,
    /// Stacked biases of the local modules, `[M_local, d_out]`.
    pub bias: ParamId,
    /// Number of modules `M` of the whole layer.
    pub modules: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    rank: usize,
    ranks: usize,
}

/// The host-side plan of one step's two exchanges, built from a rank's routing and the
/// counts its peers sent; the same plan serves forward and backward.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// Pairs this rank sends to each rank.
    send_counts: Vec<usize>,
    /// Input row of each sent pair, in send order (by destination rank, then module).
    pub(crate) send_rows: Vec<u32>,
    /// Routing pair (index in the routing's module order) of each sent pair.
    pub(crate) send_pairs: Vec<u32>,
    /// Send slot of each routing pair: the inverse of `send_pairs`.
    slot_of_pair: Vec<u32>,
    /// The routing's `row_pos` mapped into send order: where each row's pairs come back.
    combine_pos: Vec<u32>,
    /// Pairs this rank receives from each rank.
    recv_counts: Vec<usize>,
    /// Received pair (row of the received buffer) of each local pair in module order.
    recv_order: Vec<u32>,
    /// Start of each local module's block in `recv_order`; `M_local + 1` entries.
    local_offsets: Vec<u32>,
}

/// A whole modular linear layer's parameters gathered from its shards by
/// [`ExpertLinear::gather`], in the single-process layout of [`ModularLinear`].
#[derive(Clone, Debug, PartialEq)]
pub struct GatheredLayer {
    /// Stacked weights `[M * d_in, d_out]`, row-major; module `m`'s block at `m`.
    pub weight: Vec<f32>,
    /// Stacked biases `[M, d_out]`, row-major.
    pub bias: Vec<f32>,
}

/// With gates, the pairs' ungated outputs in routing order (`[pairs, d_out]`) and each pair's
/// gate (`[pairs, 1]`).
pub(crate) type Gated<B> = Option<(<B as Backend>::Tensor, <B as Backend>::Tensor)>;

/// What [`ExpertLinear::forward`] keeps for the backward pass.
#[derive(Debug)]
pub struct ExpertCache<B: Backend> {
    plan: Exchange,
    /// The input rows this rank received for its modules, `[R, d_in]`.
    received: B::Tensor,
    /// The caller's routing.
    routing: Routing,
    /// With gates, what the gated backward needs.
    gated: Gated<B>,
}

/// Downloads `ts` (each `[rows, width]`) with their widths.
fn download_all<B: Backend, const N: usize>(
    b: &B,
    ts: &[&B::Tensor; N],
) -> Result<(Vec<Vec<f32>>, [usize; N]), DistError> {
    let hosts = ts.iter().map(|t| b.download(t)).collect::<Result<_, _>>()?;
    Ok((hosts, ts.map(|t| b.shape(t)[1])))
}

/// Rows `rows` of the row-major `hosts` (rows of `widths`), each output row the tensors' rows
/// side by side, in order.
fn interleave(hosts: &[Vec<f32>], widths: &[usize], rows: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.size_hint().0 * widths.iter().sum::<usize>());
    for r in rows {
        for (h, &w) in hosts.iter().zip(widths) {
            out.extend_from_slice(&h[r * w..(r + 1) * w]);
        }
    }
    out
}

/// One all-to-all-v of rows holding one row of each of several tensors side by side (of
/// `widths`): `send` holds `out[q]` rows for each rank `q`; returns the `in_[s]` rows from
/// each rank `s`, split back into one `[rows, width]` tensor per width.
fn exchange<B: Backend, const N: usize>(
    b: &B,
    comm: &impl Comm,
    send: &[f32],
    out: &[usize],
    in_: &[usize],
    widths: [usize; N],
) -> Result<[B::Tensor; N], DistError> {
    let width: usize = widths.iter().sum();
    let values = |counts: &[usize]| counts.iter().map(|c| c * width).collect::<Vec<_>>();
    let got = comm.all_to_all_v(send, &values(out), &values(in_))?;
    let rows: usize = in_.iter().sum();
    let mut start = 0;
    Ok(widths.map(|w| {
        let t = if w == width {
            b.upload([rows, w], &got)
        } else {
            let part: Vec<f32> = (0..rows)
                .flat_map(|r| &got[r * width + start..r * width + start + w])
                .copied()
                .collect();
            b.upload([rows, w], &part)
        };
        start += w;
        t
    }))
}

impl ExpertLinear {
    /// This rank's shard of the single-process layer `full` (whose parameters are in
    /// `full_params`), registered in `params` as `{name}.weight` and `{name}.bias`.
    ///
    /// # Errors
    /// [`DistError::Setup`] if the layer has fewer modules than there are ranks (a rank
    /// without modules would hold empty parameters), or a device error while reading `full`.
    pub fn shard<B: Backend>(
        b: &B,
        comm: &impl Comm,
        params: &mut ParamStore<B>,
        name: &str,
        full: &ModularLinear,
        full_params: &ParamStore<B>,
    ) -> Result<Self, DistError> {
        let (rank, ranks) = (comm.rank(), comm.size());
        if full.modules < ranks {
            return Err(DistError::Setup(format!(
                "layer {name} has {} modules but the job has {ranks} ranks; expert parallelism \
                 needs at least one module per rank (run with fewer ranks, or use data \
                 parallelism)",
                full.modules
            )));
        }
        let w = b.download(full_params.get(full.weight))?;
        let bias = b.download(full_params.get(full.bias))?;
        let local = local_modules(full.modules, ranks, rank);
        let owned = || (0..local).map(|l| l * ranks + rank);
        let block = full.d_in * full.d_out;
        let w_local: Vec<f32> = owned()
            .flat_map(|m| &w[m * block..(m + 1) * block])
            .copied()
            .collect();
        let bias_local = interleave(std::slice::from_ref(&bias), &[full.d_out], owned());
        Ok(ExpertLinear {
            weight: params.add(
                format!("{name}.weight"),
                b.upload([local * full.d_in, full.d_out], &w_local),
            ),
            bias: params.add(
                format!("{name}.bias"),
                b.upload([local, full.d_out], &bias_local),
            ),
            modules: full.modules,
            d_in: full.d_in,
            d_out: full.d_out,
            rank,
            ranks,
        })
    }

    /// The whole layer's stacked weights and biases gathered from every rank's shard on rank
    /// `root`, in the single-process layout (module `m`'s block at `m`), for example to write
    /// one checkpoint that any number of ranks can resume from; `None` on the other ranks.
    /// Collective.
    ///
    /// # Errors
    /// [`DistError::Setup`] if `comm` is not the group of this shard or `root` is not a rank;
    /// communication and device errors.
    pub fn gather<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        root: usize,
    ) -> Result<Option<GatheredLayer>, DistError> {
        self.check_comm(comm)?;
        if root >= self.ranks {
            return Err(DistError::Setup(format!(
                "cannot gather layer shards on rank {root} of {}",
                self.ranks
            )));
        }
        let p = self.ranks;
        // Each rank's weights, then its biases, to `root` only.
        let width = self.d_in * self.d_out + self.d_out;
        let mut send = b.download(params.get(self.weight))?;
        send.extend(b.download(params.get(self.bias))?);
        let to_root: Vec<usize> = (0..p)
            .map(|q| if q == root { send.len() } else { 0 })
            .collect();
        let from: Vec<usize> = (0..p)
            .map(|s| {
                if self.rank == root {
                    local_modules(self.modules, p, s) * width
                } else {
                    0
                }
            })
            .collect();
        let got = comm.all_to_all_v(&send, &to_root, &from)?;
        if self.rank != root {
            return Ok(None);
        }
        let block = self.d_in * self.d_out;
        let mut weight = vec![0.0; self.modules * block];
        let mut bias = vec![0.0; self.modules * self.d_out];
        let mut at = 0;
        for s in 0..p {
            let local = local_modules(self.modules, p, s);
            let (w, rest) = got[at..at + local * width].split_at(local * block);
            for l in 0..local {
                let m = l * p + s;
                weight[m * block..(m + 1) * block].copy_from_slice(&w[l * block..(l + 1) * block]);
                bias[m * self.d_out..(m + 1) * self.d_out]
                    .copy_from_slice(&rest[l * self.d_out..(l + 1) * self.d_out]);
            }
            at += local * width;
        }
        Ok(Some(GatheredLayer { weight, bias }))
    }

    /// Number of modules this rank owns.
    pub fn local_modules(&self) -> usize {
        local_modules(self.modules, self.ranks, self.rank)
    }

    /// The layer's index of this rank's local module `local` (`local * P + rank`).
    pub fn module(&self, local: usize) -> usize {
        local * self.ranks + self.rank
    }

    /// Checks that `comm` is the group this shard was made for.
    pub(crate) fn check_comm(&self, comm: &impl Comm) -> Result<(), DistError> {
        if (comm.rank(), comm.size()) == (self.rank, self.ranks) {
            Ok(())
        } else {
            Err(DistError::Setup(format!(
                "expert layer sharded for rank {} of {} called on rank {} of {}",
                self.rank,
                self.ranks,
                comm.rank(),
                comm.size()
            )))
        }
    }

    /// Exchanges the per-module counts and builds the step's plan (collective).
    pub(crate) fn plan(&self, comm: &impl Comm, routing: &Routing) -> Result<Exchange, DistError> {
        let p = self.ranks;
        // Send order: destination rank q, then q's modules q, q + P, ... in increasing order,
        // each module's pairs in the routing's (row) order.
        let mut send_pairs = Vec::with_capacity(routing.pairs());
        let mut send_counts = vec![0usize; p];
        let mut module_counts = Vec::with_capacity(self.modules);
        let mut meta_counts = vec![0usize; p];
        for (q, (sent, meta)) in send_counts.iter_mut().zip(&mut meta_counts).enumerate() {
            for m in (q..self.modules).step_by(p) {
                let (lo, hi) = (routing.offsets[m], routing.offsets[m + 1]);
                send_pairs.extend(lo..hi);
                module_counts.push(hi - lo);
                *sent += (hi - lo) as usize;
            }
            *meta = local_modules(self.modules, p, q);
        }
        let local = self.local_modules();
        // Counts first: rank s learns how many rows each of its modules gets from every rank.
        let got = comm.all_to_all_v(&module_counts, &meta_counts, &vec![local; p])?;
        let recv_counts: Vec<usize> = got
            .chunks(local)
            .map(|c| c.iter().map(|&x| x as usize).sum())
            .collect();
        // Where source s's rows for local module l start in the received buffer.
        let mut starts = Vec::with_capacity(p * local);
        let mut at = 0u32;
        for c in got.chunks(local) {
            for &n in c {
                starts.push(at);
                at += n;
            }
        }
        let mut recv_order = Vec::with_capacity(at as usize);
        let mut local_offsets = Vec::with_capacity(local + 1);
        local_offsets.push(0u32);
        for l in 0..local {
            for s in 0..p {
                let start = starts[s * local + l];
                recv_order.extend(start..start + got[s * local + l]);
            }
            local_offsets.push(recv_order.len() as u32);
        }
        let mut slot_of_pair = vec![0u32; routing.pairs()];
        for (j, &pair) in send_pairs.iter().enumerate() {
            slot_of_pair[pair as usize] = j as u32;
        }
        Ok(Exchange {
            send_counts,
            send_rows: send_pairs
                .iter()
                .map(|&pair| routing.pair_rows[pair as usize])
                .collect(),
            send_pairs,
            combine_pos: routing
                .row_pos
                .iter()
                .map(|&pos| slot_of_pair[pos as usize])
                .collect(),
            slot_of_pair,
            recv_counts,
            recv_order,
            local_offsets,
        })
    }

    /// Sends rows `rows` of each tensor of `ts` (one per sent pair, in send order:
    /// `plan.send_rows` of the rows' tensors, or `plan.send_pairs` of tensors in routing
    /// order) to their modules' owners, all tensors' rows side by side in one exchange, and
    /// returns what this rank received of each, `[R, width]` in received order (collective).
    pub(crate) fn dispatch<B: Backend, const N: usize>(
        b: &B,
        comm: &impl Comm,
        plan: &Exchange,
        ts: [&B::Tensor; N],
        rows: &[u32],
    ) -> Result<[B::Tensor; N], DistError> {
        let (hosts, widths) = download_all(b, &ts)?;
        let send = interleave(&hosts, &widths, rows.iter().map(|&r| r as usize));
        exchange(b, comm, &send, &plan.send_counts, &plan.recv_counts, widths)
    }

    /// Sends per-pair rows `ts` (each `[R, width]`, local module order) back to the rows'
    /// owners in one exchange; returns what this rank's pairs got of each, `[pairs, width]` in
    /// send order (collective).
    pub(crate) fn collect<B: Backend, const N: usize>(
        b: &B,
        comm: &impl Comm,
        plan: &Exchange,
        ts: [&B::Tensor; N],
    ) -> Result<[B::Tensor; N], DistError> {
        let (hosts, widths) = download_all(b, &ts)?;
        // Back into received order in one copy: received row `order[k]` is local row `k`.
        let mut local_row = vec![0usize; plan.recv_order.len()];
        for (k, &at) in plan.recv_order.iter().enumerate() {
            local_row[at as usize] = k;
        }
        let send = interleave(&hosts, &widths, local_row.into_iter());
        exchange(b, comm, &send, &plan.recv_counts, &plan.send_counts, widths)
    }

    /// Sums each of this rank's rows' pairs `pairs` (`[pairs, width]`, send order), in the
    /// single-process layer's order: `[n, width]`.
    pub(crate) fn sum_rows<B: Backend>(
        b: &B,
        plan: &Exchange,
        routing: &Routing,
        pairs: &B::Tensor,
    ) -> B::Tensor {
        b.segment_sum_rows(pairs, &plan.combine_pos, &routing.row_ptr)
    }

    /// Checks one forward pass's input `x`, routing and gates against the layer.
    pub(crate) fn check_input<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
    ) -> Result<(), DistError> {
        let gate_shape = gates.map(|g| b.shape(g));
        if b.shape(x) != [routing.rows(), self.d_in]
            || routing.modules() != self.modules
            || gate_shape.is_some_and(|s| s != [routing.rows(), routing.k()])
        {
            return Err(DistError::Setup(format!(
                "expert layer ({} modules, d_in {}) got input {:?}, a routing of {} rows of {} \
                 slots over {} modules, and gates {gate_shape:?}",
                self.modules,
                self.d_in,
                b.shape(x),
                routing.rows(),
                routing.k(),
                routing.modules()
            )));
        }
        Ok(())
    }

    /// The grouped product of this rank's modules over the rows it received (`[R, d_in]`):
    /// one output row per received pair, `[R, d_out]`.
    pub(crate) fn local_forward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        plan: &Exchange,
        received: &B::Tensor,
    ) -> B::Tensor {
        b.grouped_product_rows(
            GroupedOp::XW,
            received,
            params.get(self.weight),
            &plan.recv_order,
            &plan.local_offsets,
            Some(params.get(self.bias)),
        )
    }

    /// This rank's rows' outputs `[n, d_out]` from their pairs' outputs (`[pairs, d_out]` in
    /// send order), gated or not, and what the gated backward needs.
    pub(crate) fn combine<B: Backend>(
        b: &B,
        plan: &Exchange,
        routing: &Routing,
        pairs: &B::Tensor,
        gates: Option<&B::Tensor>,
    ) -> (B::Tensor, Gated<B>) {
        match gates {
            None => (Self::sum_rows(b, plan, routing, pairs), None),
            Some(g) => {
                // The single-process layer's gated sum, on the outputs in routing order.
                let ys = b.gather_rows(pairs, &plan.slot_of_pair);
                let pg = pair_gates(b, routing, g);
                (gated_sum(b, routing, &ys, &pg), Some((ys, pg)))
            }
        }
    }

    /// With gates, the backward pass's gated part for output gradient `dy`: the pairs' gated
    /// output gradients in routing order (what travels to the modules' owners, by
    /// `plan.send_pairs`) and `dL/dgates` (which stays on the rows' rank). Without gates,
    /// `None`: `dy`'s own rows travel, by `plan.send_rows`.
    pub(crate) fn gated_grads<B: Backend>(
        b: &B,
        routing: &Routing,
        gated: &Gated<B>,
        dy: &B::Tensor,
    ) -> Option<(B::Tensor, B::Tensor)> {
        gated
            .as_ref()
            .map(|(ys, pg)| gated_sum_backward(b, routing, dy, ys, pg))
    }

    /// The backward pass on the module owner: accumulates this rank's modules' weight and
    /// bias gradients from the received rows (`[R, d_in]`) and their output gradients
    /// (`[R, d_out]`), and returns the pairs' input gradients `[R, d_in]`.
    pub(crate) fn local_backward<B: Backend>(
        &self,
        b: &B,
        params: &ParamStore<B>,
        plan: &Exchange,
        received: &B::Tensor,
        dys: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> B::Tensor {
        let local = self.local_modules();
        let (dw, beta) = grads.product_entry(b, self.weight, [local * self.d_in, self.d_out]);
        b.grouped_matmul_rows(
            GroupedOp::XtY,
            received,
            dys,
            &plan.recv_order,
            &plan.local_offsets,
            beta,
            dw,
        );
        let db = b.segment_sum_rows(dys, &plan.recv_order, &plan.local_offsets);
        grads.accumulate(b, self.bias, &db);
        b.grouped_product_rows(
            GroupedOp::XWt,
            dys,
            params.get(self.weight),
            &plan.recv_order,
            &plan.local_offsets,
            None,
        )
    }

    /// Checks an output gradient's shape against the layer and the forward pass's rows.
    pub(crate) fn check_grad<B: Backend>(
        &self,
        b: &B,
        rows: usize,
        dy: &B::Tensor,
    ) -> Result<(), DistError> {
        if b.shape(dy) == [rows, self.d_out] {
            Ok(())
        } else {
            Err(DistError::Setup(format!(
                "expert layer output gradient is {:?}, expected [{rows}, {}]",
                b.shape(dy),
                self.d_out
            )))
        }
    }

    /// Forward pass for this rank's rows `x` (`[n, d_in]`, `n` may be 0) routed by `routing`
    /// (built from this rank's selection over all `M` modules), optionally weighting each
    /// selected module's output by a gate (`gates: [n, K]`, applied on this rank when the
    /// outputs come back); returns `[n, d_out]`, equal (up to summation order inside the
    /// products) to [`ModularLinear::forward`]. Collective: every rank calls it in the same
    /// step.
    ///
    /// # Errors
    /// [`DistError::Setup`] if `x`, `routing` or `gates` disagree with the layer or each
    /// other, or `comm` is not the group of this shard; communication and device errors.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        x: &B::Tensor,
        routing: &Routing,
        gates: Option<&B::Tensor>,
    ) -> Result<(B::Tensor, ExpertCache<B>), DistError> {
        self.check_comm(comm)?;
        self.check_input(b, x, routing, gates)?;
        let plan = self.plan(comm, routing)?;
        let [received] = Self::dispatch(b, comm, &plan, [x], &plan.send_rows)?;
        let ys = self.local_forward(b, params, &plan, &received);
        let [pairs] = Self::collect(b, comm, &plan, [&ys])?;
        let (y, gated) = Self::combine(b, &plan, routing, &pairs, gates);
        Ok((
            y,
            ExpertCache {
                plan,
                received,
                routing: routing.clone(),
                gated,
            },
        ))
    }

    /// Backward pass: accumulates the gradients of this rank's modules (from every rank's
    /// rows routed to them) into `grads` and returns `dL/dx` for this rank's rows
    /// (`[n, d_in]`) and, when the forward pass had gates, `dL/dgates` (`[n, K]`). Collective.
    ///
    /// # Errors
    /// [`DistError::Setup`] if `dy` is not `[n, d_out]`; communication and device errors.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        comm: &impl Comm,
        params: &ParamStore<B>,
        cache: ExpertCache<B>,
        dy: &B::Tensor,
        grads: &mut Grads<B>,
    ) -> Result<(B::Tensor, Option<B::Tensor>), DistError> {
        self.check_comm(comm)?;
        let (plan, routing) = (&cache.plan, &cache.routing);
        self.check_grad(b, routing.rows(), dy)?;
        let (dys, dgates) = match Self::gated_grads(b, routing, &cache.gated, dy) {
            None => (Self::dispatch(b, comm, plan, [dy], &plan.send_rows)?, None),
            Some((dys, dg)) => (
                Self::dispatch(b, comm, plan, [&dys], &plan.send_pairs)?,
                Some(dg),
            ),
        };
        let [dys] = dys;
        let dxs = self.local_backward(b, params, plan, &cache.received, &dys, grads);
        let [pairs] = Self::collect(b, comm, plan, [&dxs])?;
        Ok((Self::sum_rows(b, plan, routing, &pairs), dgates))
    }
}
