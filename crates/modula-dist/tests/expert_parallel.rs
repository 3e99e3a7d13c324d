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
use modula_dist::{
    Comm, ExpertGruModules, ExpertLinear, LocalComm, TimedComm, all_reduce_grads, shard_range,
};
use modula_modular::{ModularGruModules, ModularLinear, Routing, Selection};
use modula_nn::{Ctx, Grads, Init, Linear, Module, Optimizer, ParamStore, Sgd};
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

/// Runs `case` on this rank of `comm`, with per-slot gates when `gated`, and compares with
/// the single-process layer.
fn check_case(comm: &impl Comm, case: &Case, gated: bool) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(case.rows as u64 * 1000 + case.modules as u64);
    let mut full_params = ParamStore::new();
    let full = ModularLinear::new(
        &b,
        &mut full_params,
        "layer",
        case.modules,
        case.d_in,
        case.d_out,
        &mut rng,
    );
    // Nonzero biases, so that the bias path is compared too.
    let bias = values(&mut rng, case.modules * case.d_out);
    *full_params.get_mut(full.bias) = b.upload([case.modules, case.d_out], &bias);
    let x = values(&mut rng, case.rows * case.d_in);
    let dy = values(&mut rng, case.rows * case.d_out);
    let picks: Vec<u32> = (0..case.rows * case.k)
        .map(|_| rng.random_range(0..case.used as u32))
        .collect();
    let gates = values(&mut rng, case.rows * case.k);
    let gates_of = |rows: std::ops::Range<usize>| {
        gated.then(|| {
            b.upload(
                [rows.len(), case.k],
                &gates[rows.start * case.k..rows.end * case.k],
            )
        })
    };

    // The reference: the whole batch in one process.
    let routing = Routing::new(&Selection::new(case.k, picks.clone()), case.modules);
    let (y_ref, cache) = full.forward(
        &b,
        &full_params,
        &b.upload([case.rows, case.d_in], &x),
        &routing,
        gates_of(0..case.rows).as_ref(),
    );
    let mut g_ref = Grads::new();
    let (dx_ref, dg_ref) = full.backward(
        &b,
        &full_params,
        &routing,
        cache,
        &b.upload([case.rows, case.d_out], &dy),
        &mut g_ref,
    );
    let dl = |t: &<Cpu as Backend>::Tensor| b.download(t).map_err(|e| e.to_string());
    let (y_ref, dx_ref) = (dl(&y_ref)?, dl(&dx_ref)?);
    let dg_ref = dg_ref.map(|g| dl(&g)).transpose()?;
    let dw_ref = dl(g_ref
        .get(full.weight)
        .ok_or("no reference weight gradient")?)?;
    let db_ref = dl(g_ref.get(full.bias).ok_or("no reference bias gradient")?)?;

    // This rank's rows through the sharded layer.
    let (rank, ranks) = (comm.rank(), comm.size());
    let mine = shard_range(case.rows, rank, ranks);
    let n = mine.len();
    let mut params = ParamStore::new();
    let layer = ExpertLinear::shard(&b, comm, &mut params, "layer", &full, &full_params)
        .map_err(|e| e.to_string())?;
    let local_routing = Routing::new(
        &Selection::new(
            case.k,
            picks[mine.start * case.k..mine.end * case.k].to_vec(),
        ),
        case.modules,
    );
    let err = |e: modula_dist::DistError| e.to_string();
    let comm = &TimedComm::new(comm);
    let (y, cache) = layer
        .forward(
            &b,
            comm,
            &params,
            &b.upload(
                [n, case.d_in],
                &x[mine.start * case.d_in..mine.end * case.d_in],
            ),
            &local_routing,
            gates_of(mine.clone()).as_ref(),
        )
        .map_err(err)?;
    let mut grads = Grads::new();
    let (dx, dg) = layer
        .backward(
            &b,
            comm,
            &params,
            cache,
            &b.upload(
                [n, case.d_out],
                &dy[mine.start * case.d_out..mine.end * case.d_out],
            ),
            &mut grads,
        )
        .map_err(err)?;
    let at = |what: &str| {
        let kind = if gated { "gated" } else { "ungated" };
        format!("{}, {kind} (rank {rank} of {ranks}): {what}", case.name)
    };
    // Bytes to other ranks: the counts of their modules, then each remote pair's input row
    // and output gradient out and its output and input gradient back.
    let (counts, pairs) = traffic(case, &picks, rank, ranks);
    let want_bytes = 4 * (counts + pairs * (case.d_in + case.d_out));
    let sent = comm.take().1;
    if sent != want_bytes as u64 {
        return Err(at(&format!(
            "sent {sent} bytes to other ranks, expected {want_bytes}"
        )));
    }
    close(
        &at("y"),
        &dl(&y)?,
        &y_ref[mine.start * case.d_out..mine.end * case.d_out],
    )?;
    close(
        &at("dx"),
        &dl(&dx)?,
        &dx_ref[mine.start * case.d_in..mine.end * case.d_in],
    )?;
    match (dg, dg_ref) {
        (None, None) => {}
        (Some(dg), Some(dg_ref)) => close(
            &at("dgates"),
            &dl(&dg)?,
            &dg_ref[mine.start * case.k..mine.end * case.k],
        )?,
        _ => return Err(at("gate gradients on one side only")),
    }
    let dw = dl(grads.get(layer.weight).ok_or("no weight gradient")?)?;
    let db = dl(grads.get(layer.bias).ok_or("no bias gradient")?)?;
    owned_blocks(&at("dW"), &layer, case.d_in * case.d_out, &dw, &dw_ref)?;
    owned_blocks(&at("db"), &layer, case.d_out, &db, &db_ref)
}

/// What rank `rank` of `ranks` exchanges with the others in one step of `case` with the
/// selections `picks` (`k` per row of the global batch): the number of per-module counts it
/// sends, and the number of its pairs routed to other ranks' modules plus the number of
/// other ranks' pairs routed to its modules.
fn traffic(case: &Case, picks: &[u32], rank: usize, ranks: usize) -> (usize, usize) {
    let remote = |from: usize, to: usize| -> usize {
        let rows = shard_range(case.rows, from, ranks);
        let routing = Routing::new(
            &Selection::new(
                case.k,
                picks[rows.start * case.k..rows.end * case.k].to_vec(),
            ),
            case.modules,
        );
        (0..case.modules)
            .filter(|m| m % ranks == to)
            .map(|m| routing.count(m))
            .sum()
    };
    let others = || (0..ranks).filter(|&q| q != rank);
    let counts = others()
        .map(|q| modula_dist::local_modules(case.modules, ranks, q))
        .sum();
    let pairs = others().map(|q| remote(rank, q) + remote(q, rank)).sum();
    (counts, pairs)
}

/// The expert-parallel GRU modules against [`ModularGruModules`] on `case` (`d_in` the input
/// width, `d_out` the hidden width), with per-slot gates when `gated`: this rank's rows of
/// `h_t`, `dx` and `dh_prev` (and `dgates`), its modules' gradients on both sides, and one
/// exchange each way per pass (one set of counts, each pair's `[x | h]` and `[gx | gh]` rows
/// once).
fn check_gru_case(comm: &impl Comm, case: &Case, gated: bool) -> Result<(), String> {
    let b = Cpu::with_threads(1);
    let (d_in, hid, k) = (case.d_in, case.d_out, case.k);
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
    let picks: Vec<u32> = (0..case.rows * k)
        .map(|_| rng.random_range(0..case.used as u32))
        .collect();
    let gates = values(&mut rng, case.rows * k);
    let rows_of = |v: &[f32], width: usize, rows: std::ops::Range<usize>| {
        b.upload(
            [rows.len(), width],
            &v[rows.start * width..rows.end * width],
        )
    };
    let routing_of = |rows: std::ops::Range<usize>| {
        Routing::new(
            &Selection::new(k, picks[rows.start * k..rows.end * k].to_vec()),
            case.modules,
        )
    };
    let gates_of = |rows: std::ops::Range<usize>| gated.then(|| rows_of(&gates, k, rows));
    let dl = |t: &<Cpu as Backend>::Tensor| b.download(t).map_err(|e| e.to_string());

    let all = 0..case.rows;
    let routing = routing_of(all.clone());
    let (h_ref, cache) = full.forward(
        &b,
        &full_params,
        &rows_of(&x, d_in, all.clone()),
        &rows_of(&h0, hid, all.clone()),
        &routing,
        gates_of(all.clone()).as_ref(),
    );
    let mut g_ref = Grads::new();
    let (dx_ref, dh0_ref, dg_ref) = full.backward(
        &b,
        &full_params,
        &routing,
        cache,
        &rows_of(&dh, hid, all),
        &mut g_ref,
    );

    let (rank, ranks) = (comm.rank(), comm.size());
    let mine = shard_range(case.rows, rank, ranks);
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
            &rows_of(&x, d_in, mine.clone()),
            &rows_of(&h0, hid, mine.clone()),
            &routing_of(mine.clone()),
            gates_of(mine.clone()).as_ref(),
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
            &rows_of(&dh, hid, mine.clone()),
            &mut grads,
        )
        .map_err(err)?;
    let at = |what: &str| {
        let kind = if gated { "gated" } else { "ungated" };
        format!("GRU {}, {kind} (rank {rank} of {ranks}): {what}", case.name)
    };
    let (counts, pairs) = traffic(case, &picks, rank, ranks);
    let want_bytes = 4 * (counts + pairs * (d_in + hid + 6 * hid));
    let sent = comm.take().1;
    if sent != want_bytes as u64 {
        return Err(at(&format!(
            "sent {sent} bytes to other ranks, expected {want_bytes}"
        )));
    }
    let mine_of = |v: &[f32], width: usize| v[mine.start * width..mine.end * width].to_vec();
    close(&at("h"), &dl(&h)?, &mine_of(&dl(&h_ref)?, hid))?;
    close(&at("dx"), &dl(&dx)?, &mine_of(&dl(&dx_ref)?, d_in))?;
    close(&at("dh_prev"), &dl(&dh0)?, &mine_of(&dl(&dh0_ref)?, hid))?;
    match (dg, dg_ref) {
        (None, None) => {}
        (Some(dg), Some(dg_ref)) => close(&at("dgates"), &dl(&dg)?, &mine_of(&dl(&dg_ref)?, k))?,
        _ => return Err(at("gate gradients on one side only")),
    }
    for (side, layer, full_layer) in [
        ("input", &shard.input, &full.input),
        ("recurrent", &shard.recurrent, &full.recurrent),
    ] {
        let grad = |g: &Grads<Cpu>, id| dl(g.get(id).ok_or(at(&format!("no {side} gradient")))?);
        owned_blocks(
            &at(&format!("{side} dW")),
            layer,
            layer.d_in * layer.d_out,
            &grad(&grads, layer.weight)?,
            &grad(&g_ref, full_layer.weight)?,
        )?;
        owned_blocks(
            &at(&format!("{side} db")),
            layer,
            layer.d_out,
            &grad(&grads, layer.bias)?,
            &grad(&g_ref, full_layer.bias)?,
        )?;
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
                "rank 0 waited 2s for rank(s) [1] to reach collective #1 (barrier)",
            ],
        );
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
            // Exiting non-zero makes mpirun end the whole job; a panic would leave the other
            // ranks waiting in their next collective until the harness's thread unwinds.
            eprintln!("worker failed on rank {rank}: {e}");
            std::process::exit(1);
        }
        println!("worker passed on rank {rank}");
    }
}
