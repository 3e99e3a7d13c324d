//! The expert-parallel modular layer against the single-process layer, on the same inputs and
//! selections: in one process (`LocalComm`), and with the `mpi` feature under
//! `mpirun -np 2` and `-np 4` (the launcher tests below start this same test binary as the
//! MPI job and run its ignored worker test on every rank).
//!
//! Every rank builds the whole single-process layer and the whole batch from one seed, runs
//! the reference on all of it, and checks its own share: its rows of `y` and `dx`, and the
//! weight and bias gradients of the modules it owns.

use modula_cpu::Cpu;
use modula_dist::{Comm, ExpertLinear, LocalComm, all_reduce_grads, shard_range};
use modula_modular::{ModularLinear, Routing, Selection};
use modula_nn::{Grads, ParamStore};
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

/// Runs `case` on this rank of `comm` and compares with the single-process layer.
fn check_case(comm: &impl Comm, case: &Case) -> Result<(), String> {
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

    // The reference: the whole batch in one process.
    let routing = Routing::new(&Selection::new(case.k, picks.clone()), case.modules);
    let (y_ref, cache) = full.forward(
        &b,
        &full_params,
        &b.upload([case.rows, case.d_in], &x),
        &routing,
        None,
    );
    let mut g_ref = Grads::new();
    let (dx_ref, _) = full.backward(
        &b,
        &full_params,
        &routing,
        cache,
        &b.upload([case.rows, case.d_out], &dy),
        &mut g_ref,
    );
    let dl = |t| b.download(t).map_err(|e| e.to_string());
    let (y_ref, dx_ref) = (dl(&y_ref)?, dl(&dx_ref)?);
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
        )
        .map_err(err)?;
    let mut grads = Grads::new();
    let dx = layer
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
    let at = |what: &str| format!("{} (rank {rank} of {ranks}): {what}", case.name);
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
    let dw = dl(grads.get(layer.weight).ok_or("no weight gradient")?)?;
    let db = dl(grads.get(layer.bias).ok_or("no bias gradient")?)?;
    let block = case.d_in * case.d_out;
    for l in 0..layer.local_modules() {
        let m = l * ranks + rank;
        close(
            &at(&format!("dW of module {m}")),
            &dw[l * block..(l + 1) * block],
            &dw_ref[m * block..(m + 1) * block],
        )?;
        close(
            &at(&format!("db of module {m}")),
            &db[l * case.d_out..(l + 1) * case.d_out],
            &db_ref[m * case.d_out..(m + 1) * case.d_out],
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
    all_reduce_grads(&b, comm, &params, &mut grads, scale, 5).map_err(|e| e.to_string())?;
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

/// Every check of this file on one rank of `comm`.
fn check_all(comm: &impl Comm) -> Result<(), String> {
    for case in CASES {
        check_case(comm, case)?;
    }
    check_allreduce(comm)
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
mod under_mpi {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A job that has not finished by then has hung (the checks take well under a second).
    const DEADLINE: Duration = Duration::from_secs(120);

    /// Runs this test binary's worker under `mpirun -np ranks` and fails with its output
    /// unless every rank passed.
    fn launch(ranks: usize) {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("mpirun")
            .args(["--oversubscribe", "--allow-run-as-root", "-np"])
            .arg(ranks.to_string())
            .arg(exe)
            .args([
                "--ignored",
                "--exact",
                "under_mpi::worker",
                "--test-threads=1",
                "--nocapture",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect(
                "could not start mpirun; install openmpi-bin (see .ci/run), or test without \
                 the mpi feature",
            );
        let start = Instant::now();
        while child.try_wait().expect("waiting for mpirun").is_none() {
            if start.elapsed() > DEADLINE {
                // The id is our own child's; nothing else is touched.
                child.kill().expect("killing a hung mpirun");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("mpirun output");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && log.matches("worker passed on rank").count() == ranks,
            "mpirun -np {ranks} failed ({}, after {:?}):\n{log}",
            out.status,
            start.elapsed()
        );
    }

    #[test]
    fn two_ranks_equal_one_process() {
        launch(2);
    }

    #[test]
    fn four_ranks_equal_one_process() {
        launch(4);
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
