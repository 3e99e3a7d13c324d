//! The expert-parallel modular layer against the single-process layer, on the same inputs and
//! selections: in one process (`LocalComm`), and with the `mpi` feature under
//! `mpirun -np 2` and `-np 4` (the launcher tests below start this same test binary as the
//! MPI job and run its ignored worker test on every rank).
//!
//! Every rank builds the whole single-process layer and the whole batch from one seed, runs
//! the reference on all of it, and checks its own share: its rows of `y` and `dx`, and the
//! weight and bias gradients of the modules it owns. The same for one step of the modular
//! GRU's modules.

use modula_cpu::Cpu;
use std::ops::Range;

use modula_dist::{
    Comm, ExpertGruModules, ExpertLinear, LocalComm, TimedComm, Traffic, all_reduce_grads,
    shard_range,
};
use modula_modular::{ModularGruModules, ModularLinear, Routing, Selection};
use modula_nn::{Ctx, Grads, Init, Linear, Module, Optimizer, ParamId, ParamStore, Sgd};
use modula_tensor::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest accepted `|got - want| / (1 + |want|)`. The distributed products see the same rows
/// in the same order per module, but the grouped GEMM may block groups of other sizes
/// differently, so sums of `d_in` (or of a module's rows) products may round differently.
const TOL: f32 = 1e-5;

/// One comparison: the global batch, the layer, and which modules the selections may use.
struct Case {
    name: &'static str,
    rows: usize,
    modules: usize,
    k: usize,
    d_in: usize,
    d_out: usize,
    /// Selections draw from modules `0..used` only, leaving the rest without rows (and, with
    /// four ranks, whole ranks without work).
    used: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "uneven shards, every module busy",
        rows: 13,
        modules: 6,
        k: 2,
        d_in: 5,
        d_out: 3,
        used: 6,
    },
    Case {
        name: "modules 3.. and rank 3 without rows",
        rows: 10,
        modules: 8,
        k: 3,
        d_in: 4,
        d_out: 7,
        used: 3,
    },
    Case {
        name: "fewer rows than ranks",
        rows: 3,
        modules: 5,
        k: 2,
        d_in: 6,
        d_out: 2,
        used: 5,
    },
    Case {
        name: "one module takes everything, repeated slots",
        rows: 9,
        modules: 4,
        k: 3,
        d_in: 3,
        d_out: 4,
        used: 1,
    },
];

/// `n` values uniform in `[-1, 1)`.
fn values(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Fails unless `got` and `want` agree within [`TOL`].
fn close(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if (g - w).abs() > TOL * (1.0 + w.abs()) {
            return Err(format!("{what}[{i}] = {g}, single process gives {w}"));
        }
    }
    Ok(())
}

/// One case's global batch as every rank draws it, and this rank's view of it.
struct Batch<'a> {
    case: &'a Case,
    gated: bool,
    /// `k` selections per row of the global batch.
    picks: Vec<u32>,
    /// `k` gates per row of the global batch (used when `gated`).
    gates: Vec<f32>,
    rank: usize,
    ranks: usize,
}

impl<'a> Batch<'a> {
    /// Draws the selections (modules `0..case.used`) and gates from `rng`.
    fn new(case: &'a Case, gated: bool, rng: &mut impl Rng, comm: &impl Comm) -> Self {
        let picks = (0..case.rows * case.k)
            .map(|_| rng.random_range(0..case.used as u32))
            .collect();
        Batch {
            case,
            gated,
            picks,
            gates: values(rng, case.rows * case.k),
            rank: comm.rank(),
            ranks: comm.size(),
        }
    }

    /// This rank's rows of the global batch.
    fn mine(&self) -> Range<usize> {
        shard_range(self.case.rows, self.rank, self.ranks)
    }

    /// The routing of the global batch's rows `rows`.
    fn routing(&self, rows: Range<usize>) -> Routing {
        let k = self.case.k;
        Routing::new(
            &Selection::new(k, self.picks[rows.start * k..rows.end * k].to_vec()),
            self.case.modules,
        )
    }

    /// The gates of rows `rows`, when the batch is gated.
    fn gates(&self, b: &Cpu, rows: Range<usize>) -> Option<<Cpu as Backend>::Tensor> {
        self.gated
            .then(|| rows_of(b, &self.gates, self.case.k, rows))
    }

    /// A failure message naming the layer, the case and the rank.
    fn at(&self, layer: &str, what: &str) -> String {
        let kind = if self.gated { "gated" } else { "ungated" };
        let (case, rank, ranks) = (self.case.name, self.rank, self.ranks);
        format!("{layer} {case}, {kind} (rank {rank} of {ranks}): {what}")
    }

    /// Checks one forward and backward pass's traffic: five collectives (the counts, then one
    /// exchange each way per pass), and the bytes of one set of counts for the other ranks'
    /// modules plus `width` values for every remote pair, out or in.
    fn check_traffic(&self, layer: &str, traffic: Traffic, width: usize) -> Result<(), String> {
        let (case, rank, ranks) = (self.case, self.rank, self.ranks);
        let remote = |from: usize, to: usize| -> usize {
            let routing = self.routing(shard_range(case.rows, from, ranks));
            (0..case.modules)
                .filter(|m| m % ranks == to)
                .map(|m| routing.count(m))
                .sum()
        };
        let others = || (0..ranks).filter(|&q| q != rank);
        let counts: usize = others()
            .map(|q| modula_dist::local_modules(case.modules, ranks, q))
            .sum();
        let pairs: usize = others().map(|q| remote(rank, q) + remote(q, rank)).sum();
        let want = (4 * (counts + pairs * width)) as u64;
        if (traffic.bytes, traffic.calls) == (want, 5) {
            Ok(())
        } else {
            Err(self.at(
                layer,
                &format!(
                    "{} collectives sent {} bytes to other ranks, expected 5 sending {want}",
                    traffic.calls, traffic.bytes
                ),
            ))
        }
    }

    /// Compares this rank's gate gradients with its rows of the single-process ones.
    fn check_dgates(
        &self,
        layer: &str,
        got: Option<<Cpu as Backend>::Tensor>,
        want: Option<Vec<f32>>,
    ) -> Result<(), String> {
        match (got, want) {
            (None, None) => Ok(()),
            (Some(got), Some(want)) => close(
                &self.at(layer, "dgates"),
                &download(&got)?,
                &mine_of(&want, self.case.k, self.mine()),
            ),
            _ => Err(self.at(layer, "gate gradients on one side only")),
        }
    }
}

/// Rows `rows` of the row-major `v` (rows of `width`) as a tensor.
fn rows_of(b: &Cpu, v: &[f32], width: usize, rows: Range<usize>) -> <Cpu as Backend>::Tensor {
    b.upload(
        [rows.len(), width],
        &v[rows.start * width..rows.end * width],
    )
}

/// Rows `rows` of the row-major `v` (rows of `width`).
fn mine_of(v: &[f32], width: usize, rows: Range<usize>) -> Vec<f32> {
    v[rows.start * width..rows.end * width].to_vec()
}

/// A CPU tensor's values, or the error as a message.
fn download(t: &<Cpu as Backend>::Tensor) -> Result<Vec<f32>, String> {
    Cpu::with_threads(1).download(t).map_err(|e| e.to_string())
}

/// A gradient's values, or a message naming what is missing.
fn grad_of(grads: &Grads<Cpu>, id: ParamId, what: &str) -> Result<Vec<f32>, String> {
    download(grads.get(id).ok_or(format!("no {what} gradient"))?)
}

/// Runs `case` on this rank of `comm`, with per-slot gates when `gated`, and compares with
/// the single-process layer.
fn check_case(comm: &impl Comm, case: &Case, gated: bool) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let (d_in, d_out) = (case.d_in, case.d_out);
    let mut rng = ChaCha8Rng::seed_from_u64(case.rows as u64 * 1000 + case.modules as u64);
    let mut full_params = ParamStore::new();
    let full = ModularLinear::new(
        &b,
        &mut full_params,
        "layer",
        case.modules,
        d_in,
        d_out,
        &mut rng,
    );
    // Nonzero biases, so that the bias path is compared too.
    let bias = values(&mut rng, case.modules * d_out);
    *full_params.get_mut(full.bias) = b.upload([case.modules, d_out], &bias);
    let x = values(&mut rng, case.rows * d_in);
    let dy = values(&mut rng, case.rows * d_out);
    let batch = Batch::new(case, gated, &mut rng, comm);

    // The reference: the whole batch in one process.
    let all = 0..case.rows;
    let (y_ref, cache) = full.forward(
        &b,
        &full_params,
        &rows_of(&b, &x, d_in, all.clone()),
        &batch.routing(all.clone()),
        batch.gates(&b, all.clone()).as_ref(),
    );
    let mut g_ref = Grads::new();
    let (dx_ref, dg_ref) = full.backward(
        &b,
        &full_params,
        &batch.routing(all.clone()),
        cache,
        &rows_of(&b, &dy, d_out, all),
        &mut g_ref,
    );

    // This rank's rows through the sharded layer.
    let mine = batch.mine();
    let mut params = ParamStore::new();
    let err = |e: modula_dist::DistError| e.to_string();
    let layer =
        ExpertLinear::shard(&b, comm, &mut params, "layer", &full, &full_params).map_err(err)?;
    let comm = &TimedComm::new(comm);
    let (y, cache) = layer
        .forward(
            &b,
            comm,
            &params,
            &rows_of(&b, &x, d_in, mine.clone()),
            &batch.routing(mine.clone()),
            batch.gates(&b, mine.clone()).as_ref(),
        )
        .map_err(err)?;
    let mut grads = Grads::new();
    let (dx, dg) = layer
        .backward(
            &b,
            comm,
            &params,
            cache,
            &rows_of(&b, &dy, d_out, mine.clone()),
            &mut grads,
        )
        .map_err(err)?;
    // Each remote pair's input row and output gradient out, its output and input gradient
    // back.
    batch.check_traffic("linear", comm.take(), d_in + d_out)?;
    let at = |what: &str| batch.at("linear", what);
    close(
        &at("y"),
        &download(&y)?,
        &mine_of(&download(&y_ref)?, d_out, mine.clone()),
    )?;
    close(
        &at("dx"),
        &download(&dx)?,
        &mine_of(&download(&dx_ref)?, d_in, mine),
    )?;
    batch.check_dgates("linear", dg, dg_ref.map(|g| download(&g)).transpose()?)?;
    let (dw, db) = (
        grad_of(&grads, layer.weight, "weight")?,
        grad_of(&grads, layer.bias, "bias")?,
    );
    owned_blocks(
        &at("dW"),
        &layer,
        d_in * d_out,
        &dw,
        &grad_of(&g_ref, full.weight, "weight")?,
    )?;
    owned_blocks(
        &at("db"),
        &layer,
        d_out,
        &db,
        &grad_of(&g_ref, full.bias, "bias")?,
    )
}

/// The expert-parallel GRU modules against [`ModularGruModules`] on `case` (`d_in` the input
/// width, `d_out` the hidden width), with per-slot gates when `gated`: this rank's rows of
/// `h_t`, `dx` and `dh_prev` (and `dgates`), its modules' gradients on both sides, and one
/// exchange each way per pass (one set of counts, each pair's `[x | h]` and `[gx | gh]` rows
/// once).
fn check_gru_case(comm: &impl Comm, case: &Case, gated: bool) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let (d_in, hid) = (case.d_in, case.d_out);
    let mut rng = ChaCha8Rng::seed_from_u64(case.rows as u64 * 77 + case.modules as u64);
    let mut full_params = ParamStore::new();
    let full = ModularGruModules::new(
        &b,
        &mut full_params,
        "gru",
        d_in,
        hid,
        case.modules,
        &mut rng,
    );
    for bias in [full.input.bias, full.recurrent.bias] {
        let v = values(&mut rng, case.modules * 3 * hid);
        *full_params.get_mut(bias) = b.upload([case.modules, 3 * hid], &v);
    }
    let x = values(&mut rng, case.rows * d_in);
    let h0 = values(&mut rng, case.rows * hid);
    let dh = values(&mut rng, case.rows * hid);
    let batch = Batch::new(case, gated, &mut rng, comm);

    let all = 0..case.rows;
    let routing = batch.routing(all.clone());
    let (h_ref, cache) = full.forward(
        &b,
        &full_params,
        &rows_of(&b, &x, d_in, all.clone()),
        &rows_of(&b, &h0, hid, all.clone()),
        &routing,
        batch.gates(&b, all.clone()).as_ref(),
    );
    let mut g_ref = Grads::new();
    let (dx_ref, dh0_ref, dg_ref) = full.backward(
        &b,
        &full_params,
        &routing,
        cache,
        &rows_of(&b, &dh, hid, all),
        &mut g_ref,
    );

    let mine = batch.mine();
    let mut params = ParamStore::new();
    let err = |e: modula_dist::DistError| e.to_string();
    let shard =
        ExpertGruModules::shard(&b, comm, &mut params, "gru", &full, &full_params).map_err(err)?;
    let comm = &TimedComm::new(comm);
    let (h, cache) = shard
        .step(
            &b,
            comm,
            &params,
            &rows_of(&b, &x, d_in, mine.clone()),
            &rows_of(&b, &h0, hid, mine.clone()),
            &batch.routing(mine.clone()),
            batch.gates(&b, mine.clone()).as_ref(),
        )
        .map_err(err)?;
    let mut grads = Grads::new();
    let modula_dist::ExpertGruGrads {
        dx,
        dh_prev: dh0,
        d_gates: dg,
    } = shard
        .step_backward(
            &b,
            comm,
            &params,
            cache,
            &rows_of(&b, &dh, hid, mine.clone()),
            &mut grads,
        )
        .map_err(err)?;
    // `[x | h]` and `[d_gx | d_gh]` out, `[gx | gh]` and `[dx | dh]` back.
    batch.check_traffic("GRU", comm.take(), d_in + hid + 6 * hid)?;
    let at = |what: &str| batch.at("GRU", what);
    close(
        &at("h"),
        &download(&h)?,
        &mine_of(&download(&h_ref)?, hid, mine.clone()),
    )?;
    close(
        &at("dx"),
        &download(&dx)?,
        &mine_of(&download(&dx_ref)?, d_in, mine.clone()),
    )?;
    close(
        &at("dh_prev"),
        &download(&dh0)?,
        &mine_of(&download(&dh0_ref)?, hid, mine),
    )?;
    batch.check_dgates("GRU", dg, dg_ref.map(|g| download(&g)).transpose()?)?;
    for (side, layer, full_layer) in [
        ("input", &shard.input, &full.input),
        ("recurrent", &shard.recurrent, &full.recurrent),
    ] {
        for (part, id, full_id, block) in [
            (
                "dW",
                layer.weight,
                full_layer.weight,
                layer.d_in * layer.d_out,
            ),
            ("db", layer.bias, full_layer.bias, layer.d_out),
        ] {
            owned_blocks(
                &at(&format!("{side} {part}")),
                layer,
                block,
                &grad_of(&grads, id, side)?,
                &grad_of(&g_ref, full_id, side)?,
            )?;
        }
    }
    Ok(())
}

/// Compares each module block (`block` values) of this rank's shard `local` with the same
/// module's block of the single-process `full`.
fn owned_blocks(
    what: &str,
    layer: &ExpertLinear,
    block: usize,
    local: &[f32],
    full: &[f32],
) -> Result<(), String> {
    for l in 0..layer.local_modules() {
        let m = layer.module(l);
        close(
            &format!("{what} of module {m}"),
            &local[l * block..(l + 1) * block],
            &full[m * block..(m + 1) * block],
        )?;
    }
    Ok(())
}

/// Bucketed gradient allreduce: every rank's gradients are known functions of its rank, so
/// the reduced values have a closed form. Buckets of 5 values split some parameters' groups
/// and hold some parameters alone; the third parameter has a gradient on rank 0 only.
fn check_allreduce(comm: &impl Comm) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let (rank, ranks) = (comm.rank(), comm.size());
    let shapes = [[2, 3], [1, 1], [3, 2], [4, 1]];
    let mut params = ParamStore::new();
    let ids: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(i, &s)| params.add(format!("p{i}"), b.zeros(s)))
        .collect();
    let grad = |r: usize, i: usize, j: usize| (r * 100 + i * 10 + j) as f32;
    let mut grads = Grads::new();
    for (i, (&id, &s)) in ids.iter().zip(&shapes).enumerate() {
        if i == 2 && rank != 0 {
            continue;
        }
        let v: Vec<f32> = (0..s[0] * s[1]).map(|j| grad(rank, i, j)).collect();
        grads.accumulate(&b, id, &b.upload(s, &v));
    }
    let scale = 0.5;
    all_reduce_grads(&b, comm, &ids, &params, &mut grads, scale, 5).map_err(|e| e.to_string())?;
    for (i, (&id, &s)) in ids.iter().zip(&shapes).enumerate() {
        let want: Vec<f32> = (0..s[0] * s[1])
            .map(|j| {
                (0..ranks)
                    .filter(|&r| i != 2 || r == 0)
                    .map(|r| scale * grad(r, i, j))
                    .sum()
            })
            .collect();
        let got = b
            .download(grads.get(id).ok_or("gradient lost")?)
            .map_err(|e| e.to_string())?;
        close(&format!("reduced p{i} on rank {rank}"), &got, &want)?;
    }
    Ok(())
}

/// The regression head and squared-error loss of [`check_training`] on rows `h` with
/// targets `t`, as a part of a global batch of `total` rows: returns this part's share of the
/// mean loss and `dL/dh`, and accumulates the head's gradients.
fn head_step(
    b: &Cpu,
    params: &ParamStore<Cpu>,
    head: &Linear,
    h: &<Cpu as Backend>::Tensor,
    t: &[f32],
    total: usize,
    grads: &mut Grads<Cpu>,
) -> Result<(f32, <Cpu as Backend>::Tensor), String> {
    let (y, cache) = head.forward(b, params, h, &mut Ctx::eval());
    let y = b.download(&y).map_err(|e| e.to_string())?;
    let loss = y.iter().zip(t).map(|(y, t)| (y - t) * (y - t)).sum::<f32>() / total as f32;
    let dy: Vec<f32> = y
        .iter()
        .zip(t)
        .map(|(y, t)| 2.0 * (y - t) / total as f32)
        .collect();
    let dy = b.upload([t.len() / head.d_out, head.d_out], &dy);
    Ok((loss, head.backward(b, params, cache, &dy, grads)))
}

/// Training with both kinds of parallelism: an expert-parallel modular layer (its gradients
/// complete on the modules' owners) under a replicated linear head (data-parallel, gradients
/// summed by [`all_reduce_grads`]), a few SGD-with-momentum steps on fixed selections. Each
/// step's global loss and the final parameters must equal one process training on the whole
/// batch. (SGD rather than Adam: Adam's first steps move every weight by about `lr` times the
/// sign of its gradient, which turns a rounding difference in a near-zero gradient into a
/// full step.)
fn check_training(comm: &impl Comm) -> Result<(), String> {
    const STEPS: usize = 4;
    let (rows, modules, k, d_in, hidden, d_out) = (14, 6, 2, 4, 5, 3);
    let b = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut full_params = ParamStore::new();
    let full = ModularLinear::new(
        &b,
        &mut full_params,
        "expert",
        modules,
        d_in,
        hidden,
        &mut rng,
    );
    let head = Linear::new(
        &b,
        &mut full_params,
        "head",
        hidden,
        d_out,
        Init::Glorot,
        &mut rng,
    );
    let x = values(&mut rng, rows * d_in);
    let t = values(&mut rng, rows * d_out);
    let picks: Vec<u32> = (0..rows * k)
        .map(|_| rng.random_range(0..modules as u32))
        .collect();

    // This rank's replica of the head and shard of the modules, taken before training starts.
    let (rank, ranks) = (comm.rank(), comm.size());
    let mut params = ParamStore::new();
    let layer = ExpertLinear::shard(&b, comm, &mut params, "expert", &full, &full_params)
        .map_err(|e| e.to_string())?;
    let my_head = Linear {
        weight: params.add("head.weight", b.duplicate(full_params.get(head.weight))),
        bias: params.add("head.bias", b.duplicate(full_params.get(head.bias))),
        ..head.clone()
    };

    // One process on the whole batch.
    let routing = Routing::new(&Selection::new(k, picks.clone()), modules);
    let xs = b.upload([rows, d_in], &x);
    let mut opt = Sgd::new(0.2, 0.9);
    let mut want_losses = Vec::new();
    for _ in 0..STEPS {
        let mut grads = Grads::new();
        let (h, cache) = full.forward(&b, &full_params, &xs, &routing, None);
        let (loss, dh) = head_step(&b, &full_params, &head, &h, &t, rows, &mut grads)?;
        full.backward(&b, &full_params, &routing, cache, &dh, &mut grads);
        opt.step(&b, &mut full_params, &grads);
        want_losses.push(loss);
    }

    // This rank's rows.
    let mine = shard_range(rows, rank, ranks);
    let routing = Routing::new(
        &Selection::new(k, picks[mine.start * k..mine.end * k].to_vec()),
        modules,
    );
    let xs = b.upload([mine.len(), d_in], &x[mine.start * d_in..mine.end * d_in]);
    let my_t = &t[mine.start * d_out..mine.end * d_out];
    let mut opt = Sgd::new(0.2, 0.9);
    let err = |e: modula_dist::DistError| e.to_string();
    for (step, want) in want_losses.iter().enumerate() {
        let mut grads = Grads::new();
        let (h, cache) = layer
            .forward(&b, comm, &params, &xs, &routing, None)
            .map_err(err)?;
        let (part, dh) = head_step(&b, &params, &my_head, &h, my_t, rows, &mut grads)?;
        layer
            .backward(&b, comm, &params, cache, &dh, &mut grads)
            .map_err(err)?;
        // Per-rank losses already carry the global batch's 1/N, so the sum needs no scale.
        all_reduce_grads(
            &b,
            comm,
            &[my_head.weight, my_head.bias],
            &params,
            &mut grads,
            1.0,
            4,
        )
        .map_err(err)?;
        opt.step(&b, &mut params, &grads);
        let mut loss = [part];
        comm.all_reduce_sum(&mut loss).map_err(err)?;
        close(
            &format!("loss of step {step} on rank {rank}"),
            &loss,
            &[*want],
        )?;
    }
    let dl = |p: &ParamStore<Cpu>, id| b.download(p.get(id)).map_err(|e| e.to_string());
    let at = |what: &str| format!("after training (rank {rank} of {ranks}): {what}");
    close(
        &at("head weight"),
        &dl(&params, my_head.weight)?,
        &dl(&full_params, head.weight)?,
    )?;
    close(
        &at("head bias"),
        &dl(&params, my_head.bias)?,
        &dl(&full_params, head.bias)?,
    )?;
    let (w, w_ref) = (dl(&params, layer.weight)?, dl(&full_params, full.weight)?);
    owned_blocks(&at("weight"), &layer, d_in * hidden, &w, &w_ref)?;
    // The shards gathered on the last rank are the whole trained layer, module by module.
    let gathered = layer.gather(&b, comm, &params, ranks - 1).map_err(err)?;
    match gathered {
        Some(whole) if rank == ranks - 1 => {
            close(&at("gathered weights"), &whole.weight, &w_ref)?;
            close(
                &at("gathered biases"),
                &whole.bias,
                &dl(&full_params, full.bias)?,
            )
        }
        None if rank != ranks - 1 => Ok(()),
        _ => Err(at("gather returned the layer on the wrong rank")),
    }
}

/// Every check of this file on one rank of `comm`.
fn check_all(comm: &impl Comm) -> Result<(), String> {
    for case in CASES {
        check_case(comm, case, false)?;
        check_case(comm, case, true)?;
        check_gru_case(comm, case, false)?;
        check_gru_case(comm, case, true)?;
    }
    check_allreduce(comm)?;
    check_training(comm)
}

#[test]
fn one_process_equals_the_single_process_layer() {
    check_all(&LocalComm).unwrap();
}

#[test]
fn too_few_modules_for_the_ranks_is_an_error() {
    // A stand-in group of four ranks; `shard` checks the sizes before any communication.
    struct Four;
    impl Comm for Four {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            4
        }
        fn barrier(&self) -> Result<(), modula_dist::DistError> {
            unreachable!("not called")
        }
        fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), modula_dist::DistError> {
            unreachable!("not called")
        }
        fn all_to_all_v<T: modula_dist::Wire>(
            &self,
            _: &[T],
            _: &[usize],
            _: &[usize],
        ) -> Result<Vec<T>, modula_dist::DistError> {
            unreachable!("not called")
        }
        fn broadcast<T: modula_dist::Wire>(
            &self,
            _: &mut [T],
            _: usize,
        ) -> Result<(), modula_dist::DistError> {
            unreachable!("not called")
        }
    }
    let b = Cpu::with_threads(1);
    let mut full_params = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let full = ModularLinear::new(&b, &mut full_params, "l", 3, 2, 2, &mut rng);
    let err = ExpertLinear::shard(&b, &Four, &mut ParamStore::new(), "l", &full, &full_params)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 modules") && err.contains("4 ranks"),
        "{err}"
    );
}

#[cfg(feature = "mpi")]
mod common;

#[cfg(feature = "mpi")]
mod under_mpi {
    use std::time::Duration;

    use super::common::{launch, run_job};

    /// How soon a job whose rank died must end (issue 23's bound); mpirun takes about a
    /// second.
    const DEAD_RANK_LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn two_ranks_equal_one_process() {
        launch(2, "under_mpi::worker", &[]);
    }

    #[test]
    fn four_ranks_equal_one_process() {
        launch(4, "under_mpi::worker", &[]);
    }

    /// Runs `test` on three ranks, which must fail within [`DEAD_RANK_LIMIT`] with every one of
    /// `expected` in the job's output (`what` names the faulty rank in the messages).
    fn assert_job_ends(test: &str, what: &str, expected: &[&str]) {
        let (ok, log, took) = run_job(3, test, &[]);
        assert!(!ok, "the job with {what} succeeded:\n{log}");
        assert!(
            took < DEAD_RANK_LIMIT,
            "the job with {what} took {took:?} to end:\n{log}"
        );
        for text in expected {
            assert!(
                log.contains(text),
                "the output of the job with {what} lacks `{text}`:\n{log}"
            );
        }
    }

    #[test]
    fn a_dead_rank_ends_the_job_with_its_rank_named() {
        assert_job_ends(
            "under_mpi::dying_worker",
            "a dead rank",
            &[
                "rank 1 exits before the barrier",
                DEAD_RANK_REPORT,
                "Exit code:    3",
            ],
        );
    }

    /// How mpirun (OpenMPI 4) names the first process that exited non-zero: `[[job,1],rank]`,
    /// here rank 1.
    const DEAD_RANK_REPORT: &str = ",1],1]";

    #[test]
    fn a_panicking_rank_ends_the_job_with_its_rank_named() {
        assert_job_ends(
            "under_mpi::panicking_worker",
            "a panicking rank",
            &[
                "rank 1 panics before the barrier",
                DEAD_RANK_REPORT,
                "Exit code:    101",
            ],
        );
    }

    /// Rank 1 panics while the others wait for it in a barrier: the panic must end its
    /// process (the hook `MpiComm::init` installs) instead of unwinding into MPI's
    /// finalization.
    #[test]
    #[ignore = "runs on every rank of the MPI job that the panicking-rank test starts"]
    fn panicking_worker() {
        let comm = modula_dist::MpiComm::init().unwrap();
        assert_ne!(
            modula_dist::Comm::rank(&comm),
            1,
            "rank 1 panics before the barrier"
        );
        modula_dist::Comm::barrier(&comm).unwrap();
    }

    #[test]
    fn a_hung_rank_is_named_and_ends_the_job() {
        assert_job_ends(
            "under_mpi::hanging_worker",
            "a hung rank",
            &[
                "rank 1 hangs before the barrier",
                "rank 0 waited 2s for rank(s) [1] to reach collective #1 (barrier, 0 bytes, root 0)",
                ABORT_REPORT,
            ],
        );
    }

    /// How the arrival check says it aborts the job (mpirun's own report of `MPI_Abort`
    /// is not reliable: OpenMPI 4 sometimes fails to format it while the job is torn down).
    const ABORT_REPORT: &str = "(MPI_Abort, exit code 75)";

    #[test]
    fn ranks_in_different_collectives_are_named() {
        assert_job_ends(
            "under_mpi::mismatched_worker",
            "mismatched collectives",
            &[
                "rank 1 reached collective #0 (allreduce, 12 bytes, root 0) while rank 0 reached collective #0 (barrier, 0 bytes, root 0)",
                ABORT_REPORT,
            ],
        );
    }

    /// Rank 1 calls an allreduce while the others call a barrier: MPI alone would deadlock
    /// or mix the two up.
    #[test]
    #[ignore = "runs on every rank of the MPI job that the mismatched-collectives test starts"]
    fn mismatched_worker() {
        let comm = modula_dist::MpiComm::init()
            .unwrap()
            .with_timeout(Some(Duration::from_secs(20)));
        if modula_dist::Comm::rank(&comm) == 1 {
            modula_dist::Comm::all_reduce_sum(&comm, &mut [1.0; 3]).unwrap();
        } else {
            modula_dist::Comm::barrier(&comm).unwrap();
        }
    }

    /// Every rank passes one barrier; then rank 1 sleeps far longer than the arrival timeout
    /// (2 s here) while the others wait for it in a second barrier, which MPI alone would
    /// wait in for ever.
    #[test]
    #[ignore = "runs on every rank of the MPI job that the hung-rank test starts"]
    fn hanging_worker() {
        let comm = modula_dist::MpiComm::init()
            .unwrap()
            .with_timeout(Some(Duration::from_secs(2)));
        modula_dist::Comm::barrier(&comm).unwrap();
        if modula_dist::Comm::rank(&comm) == 1 {
            eprintln!("rank 1 hangs before the barrier");
            std::thread::sleep(Duration::from_secs(600));
        }
        modula_dist::Comm::barrier(&comm).unwrap();
    }

    /// Rank 1 exits with status 3 while the others wait for it in a barrier that can never
    /// complete: mpirun must end the job.
    #[test]
    #[ignore = "runs on every rank of the MPI job that the dead-rank test starts"]
    fn dying_worker() {
        let comm = modula_dist::MpiComm::init().unwrap();
        if modula_dist::Comm::rank(&comm) == 1 {
            eprintln!("rank 1 exits before the barrier");
            std::process::exit(3);
        }
        modula_dist::Comm::barrier(&comm).unwrap();
    }

    /// The body of the MPI job: runs on every rank, started by `launch`.
    #[test]
    #[ignore = "runs on every rank of the MPI job that the launcher tests start"]
    fn worker() {
        let comm = modula_dist::MpiComm::init().unwrap();
        let rank = modula_dist::Comm::rank(&comm);
        if let Err(e) = super::check_all(&comm) {
            // Exiting non-zero makes mpirun end the whole job, with the failure's message
            // (the panic hook `MpiComm::init` installs would do the same, less plainly).
            eprintln!("worker failed on rank {rank}: {e}");
            std::process::exit(1);
        }
        println!("worker passed on rank {rank}");
    }
}
