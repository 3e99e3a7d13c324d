//! Data-parallel training of the toy task (`Trainer::distribute`), by EM, by the dense
//! baseline and by REINFORCE, against the one-process trainer with the same global batches:
//! in one process (`LocalComm`), and with the `mpi` feature under `mpirun -np 2` and `-np 4`;
//! and checkpoints that move between rank counts.
//!
//! Every rank trains the one-process reference itself (the run is small), then the same run
//! data-parallel, and compares every iteration's global statistics, the final parameters and
//! EM's table, and the continuations of checkpoints written by one process and by the ranks.

use modula_cpu::Cpu;
use modula_data::toy::ToyConfig;
use modula_dist::{Comm, DataParallel, LocalComm};
use modula_em::models::MlpConfig;
use modula_em::{Algo, DEFAULT_DIVERGENCE_FACTOR, StepOutcome, Trainer};
use modula_nn::Checkpoint;
use modula_tasks::{ToyTask, ToyTrainConfig};
use modula_tensor::Backend;

/// Largest accepted `|got - want| / (1 + |want|)` for losses, scores and parameters.
///
/// The ranks compute each example's terms as one process does, but the gradient of the
/// global mean is a sum of per-rank partial sums (and the MPI allreduce adds those in an
/// order of its own), so every parameter differs from the one-process run's by f32 rounding,
/// about 1e-7 relative per step; Adam divides the first moment by the root of the second,
/// which can enlarge a rounding difference in a near-zero gradient, and the differences
/// compound over the steps. 1e-4 leaves a margin of about a hundred over what the runs below
/// show (under 1e-7 at two and four ranks), and is still far below any effect of a wrong shard, weight or
/// sum (a dropped or doubled example moves the loss in the second or third digit).
const TOL: f64 = 1e-4;

/// Iterations before the checkpoint, and after it.
const BEFORE: u64 = 7;
const AFTER: u64 = 5;

/// Batch sizes of the checks: five batches per epoch, and batches of three, of which two or
/// more of four ranks own no example (they take part in every sum with nothing).
const BATCHES: [usize; 2] = [48, 3];

/// The algorithms that train data-parallel: EM (sharded table), the dense baseline (nothing
/// per example) and REINFORCE (per-example sampling streams, and a baseline that follows the
/// mean reward summed over the ranks).
const ALGOS: [Algo; 3] = [Algo::Em, Algo::Dense, Algo::Reinforce];

/// The toy run of every check: 240 training examples in batches of `batch`, two modular
/// layers of four modules with two slots each, an E-step (instead of a gradient step) every
/// third iteration with four candidates per example (REINFORCE samples the same network's
/// routes); or the compute-matched dense network. Only EM's divergence guard is the default
/// one; the others' stop only non-finite losses: the dense network's second batch costs more
/// than ten times its first at any learning rate (27 against 2.4 at 0.01 and at 0.001), and
/// REINFORCE's 89 against 6.1, which is the toy targets' spread, not a divergence.
fn trainer(algo: Algo, batch: usize) -> Trainer<Cpu, ToyTask<Cpu>> {
    let task = ToyConfig {
        train: 240,
        test: 64,
        ..ToyConfig::default()
    };
    let model = MlpConfig {
        modules: 4,
        k: 2,
        layers: 2,
        hidden: 8,
        ..MlpConfig::default()
    };
    let train = ToyTrainConfig {
        algo,
        batch_size: batch,
        samples: 4,
        e_every: 3,
        lr: 0.01,
        divergence_factor: if algo == Algo::Em {
            DEFAULT_DIVERGENCE_FACTOR
        } else {
            0.0
        },
        ..ToyTrainConfig::default()
    };
    ToyTask::trainer(Cpu::with_threads(1), &task, &model, &train, 11)
}

/// A data-parallel trainer on the ranks of `comm`, summing gradients in buckets of 40 values
/// (smaller than some parameters, so that a step takes several buckets).
fn distributed<C: Comm + std::fmt::Debug + 'static>(
    comm: C,
    algo: Algo,
    batch: usize,
) -> Trainer<Cpu, ToyTask<Cpu>> {
    let mut t = trainer(algo, batch);
    t.distribute(Box::new(DataParallel::new(comm, 40).unwrap()))
        .unwrap();
    t
}

/// The figures of an iteration that every rank count must reproduce.
fn figures(o: &StepOutcome) -> Vec<f64> {
    let mut v = Vec::new();
    if let Some(e) = &o.e_step {
        v.extend([e.changed, e.score_before, e.score_after, e.coverage]);
    }
    if let Some(g) = &o.gradient {
        v.extend([g.nll, g.ctrl_nll, g.units as f64]);
        // Present or absent alike on every rank count (a rank without examples cannot tell).
        // The batch entropy is left out: data-parallel, it is the mean of the ranks' (see
        // `Replicas`), not the entropy of the whole batch's mean distribution.
        v.extend(g.controller.iter().flat_map(|c| [1.0, c.mean_entropy]));
        v.extend(g.usage.iter().flatten().map(|&u| u as f64));
    }
    v
}

/// Runs `steps` iterations of `t` and returns each one's figures.
fn run(t: &mut Trainer<Cpu, ToyTask<Cpu>>, steps: u64) -> Result<Vec<Vec<f64>>, String> {
    (0..steps)
        .map(|_| t.step().map(|o| figures(&o)).map_err(|e| e.to_string()))
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if (g - w).abs() > TOL * (1.0 + w.abs()) || g.is_nan() != w.is_nan() {
            return Err(format!("{what}[{i}]: got {g}, expected {w}"));
        }
    }
    Ok(())
}

fn close_runs(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) -> Result<(), String> {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}, iteration {step}"), g, w)?;
    }
    Ok(())
}

/// Every parameter of `t`, flattened in parameter order.
fn parameters(t: &Trainer<Cpu, ToyTask<Cpu>>) -> Vec<f64> {
    let b = &t.backend;
    t.params
        .ids()
        .flat_map(|id| b.download(t.params.get(id)).unwrap())
        .map(f64::from)
        .collect()
}

/// EM's whole table, as a checkpoint stores it.
fn table(ck: &Checkpoint) -> Vec<u16> {
    (0..2)
        .flat_map(|l| {
            ck.u16(&format!("em.assignments.{l}"), None)
                .unwrap()
                .to_vec()
        })
        .collect()
}

/// The one-process run: its algorithm and batch size, its figures before and after the
/// checkpoint, the checkpoint, and the final parameters.
struct Reference {
    algo: Algo,
    batch: usize,
    before: Vec<Vec<f64>>,
    after: Vec<Vec<f64>>,
    checkpoint: Checkpoint,
    params: Vec<f64>,
}

fn reference(algo: Algo, batch: usize) -> Reference {
    let mut t = trainer(algo, batch);
    let before = run(&mut t, BEFORE).unwrap();
    let checkpoint = t.checkpoint().unwrap();
    let after = run(&mut t, AFTER).unwrap();
    Reference {
        algo,
        batch,
        before,
        after,
        params: parameters(&t),
        checkpoint,
    }
}

/// Checks the continuation of `t` (restored from a checkpoint after [`BEFORE`] iterations)
/// against the reference's.
fn check_continuation(
    what: &str,
    t: &mut Trainer<Cpu, ToyTask<Cpu>>,
    want: &Reference,
) -> Result<(), String> {
    close_runs(what, &run(t, AFTER)?, &want.after)?;
    close(
        &format!("{what}: final parameters"),
        &parameters(t),
        &want.params,
    )
}

/// Data-parallel training on the ranks of `comm` against the one-process reference; returns
/// rank 0's checkpoint after [`BEFORE`] iterations (the others return their own, partial one).
fn check_training<C: Comm + Clone + std::fmt::Debug + 'static>(
    comm: C,
    want: &Reference,
) -> Result<Checkpoint, String> {
    let (rank, ranks) = (comm.rank(), comm.size());
    let at = |m: &str| format!("rank {rank} of {ranks}: {m}");
    let mut t = distributed(comm.clone(), want.algo, want.batch);
    close_runs(&at("training"), &run(&mut t, BEFORE)?, &want.before)?;
    let ck = t.checkpoint().map_err(|e| at(&e.to_string()))?;
    if rank == 0 && want.algo == Algo::Em {
        // Assignments are chosen by comparing scores, which differ by rounding only: a
        // table that differs anywhere means a shard went to the wrong rank or was lost.
        if table(&ck) != table(&want.checkpoint) {
            return Err(at("the gathered EM table differs from one process's"));
        }
    }
    check_continuation(&at("continued"), &mut t, want)?;
    // The one-process checkpoint, resumed on these ranks.
    let mut resumed = distributed(comm, want.algo, want.batch);
    resumed
        .restore(&want.checkpoint)
        .map_err(|e| at(&e.to_string()))?;
    check_continuation(&at("one process's checkpoint resumed"), &mut resumed, want)?;
    Ok(ck)
}

/// Resumes `ck` (written after [`BEFORE`] iterations by some number of ranks) in one process
/// and checks the continuation.
fn check_one_process_resume(ck: &Checkpoint, want: &Reference) -> Result<(), String> {
    let mut t = trainer(want.algo, want.batch);
    t.restore(ck).map_err(|e| e.to_string())?;
    check_continuation("a ranks' checkpoint resumed in one process", &mut t, want)
}

#[test]
fn one_rank_trains_as_one_process() {
    for algo in ALGOS {
        for batch in BATCHES {
            let want = reference(algo, batch);
            let ck = check_training(LocalComm, &want).unwrap();
            check_one_process_resume(&ck, &want).unwrap();
        }
    }
}

#[test]
fn data_parallel_runs_refuse_batch_level_algorithms() {
    let mut t = ToyTask::trainer(
        Cpu::with_threads(1),
        &ToyConfig::default(),
        &MlpConfig::default(),
        &ToyTrainConfig {
            algo: Algo::Topk,
            ..ToyTrainConfig::default()
        },
        0,
    );
    let err = t
        .distribute(Box::new(DataParallel::new(LocalComm, 8).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.algo") && err.contains("\"em\", \"dense\" or \"reinforce\""),
        "{err}"
    );
}

#[test]
fn a_checkpoint_with_too_few_examples_is_refused() {
    let want = reference(Algo::Em, 48);
    let mut ck = want.checkpoint;
    // Half the table: another run's checkpoint.
    for l in 0..2 {
        let name = format!("em.assignments.{l}");
        let half = ck.u16(&name, None).unwrap()[..120 * 2].to_vec();
        ck.insert(name, modula_nn::StoredTensor::u16(vec![120, 2], half));
    }
    let mut t = distributed(LocalComm, Algo::Em, 48);
    let err = t.restore(&ck).unwrap_err().to_string();
    assert!(err.contains("em.assignments.0"), "{err}");
}

#[cfg(feature = "mpi")]
mod common;

#[cfg(feature = "mpi")]
mod under_mpi {
    use super::common::launch;
    use super::{ALGOS, BATCHES, Reference, check_one_process_resume, check_training, reference};
    use modula_em::Algo;
    use std::rc::Rc;

    use modula_dist::{Comm, MpiComm};
    use modula_nn::Checkpoint;

    /// Where the 4-rank job writes its checkpoint, and the 2-rank job reads it.
    const CK_OUT: &str = "MODULA_TEST_CK_OUT";
    const CK_IN: &str = "MODULA_TEST_CK_IN";

    #[test]
    fn two_ranks_train_as_one_process() {
        launch(2, "under_mpi::worker", &[]);
    }

    #[test]
    fn a_four_rank_checkpoint_resumes_on_two_ranks_and_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("four.ckpt");
        let path = path.to_str().unwrap();
        launch(4, "under_mpi::worker", &[(CK_OUT, path)]);
        launch(2, "under_mpi::worker", &[(CK_IN, path)]);
        let ck = Checkpoint::read(path).unwrap();
        check_one_process_resume(&ck, &reference(Algo::Em, BATCHES[0])).unwrap();
    }

    /// Resumes the checkpoint at `path` on the ranks of `comm`.
    fn resume(comm: MpiComm, path: &str, want: &Reference) -> Result<(), String> {
        let ck = Checkpoint::read(path).map_err(|e| e.to_string())?;
        let mut t = super::trainer(want.algo, want.batch);
        t.distribute(Box::new(
            modula_dist::DataParallel::new(comm, 40).map_err(|e| e.to_string())?,
        ))
        .map_err(|e| e.to_string())?;
        t.restore(&ck).map_err(|e| e.to_string())?;
        super::check_continuation("a checkpoint of other ranks resumed", &mut t, want)
    }

    /// The body of the MPI jobs: the checks on every rank; with `MODULA_TEST_CK_OUT`, rank 0
    /// also writes the ranks' checkpoint there, and with `MODULA_TEST_CK_IN` every rank resumes
    /// the checkpoint written there instead.
    #[test]
    #[ignore = "runs on every rank of the MPI jobs that the launcher tests start"]
    fn worker() {
        let comm = MpiComm::init().unwrap();
        let rank = comm.rank();
        let result = if let Ok(path) = std::env::var(CK_IN) {
            resume(comm, &path, &reference(Algo::Em, BATCHES[0]))
        } else {
            // Shared by the trainers `check_training` builds; MPI is finalized when the last
            // one is dropped.
            let comm = Rc::new(comm);
            let mut runs = ALGOS
                .iter()
                .flat_map(|&a| BATCHES.iter().map(move |&b| (a, b)));
            runs.try_for_each(|(algo, batch)| {
                let ck = check_training(Rc::clone(&comm), &reference(algo, batch))?;
                match std::env::var(CK_OUT) {
                    Ok(path) if rank == 0 && algo == Algo::Em && batch == BATCHES[0] => {
                        ck.write(&path).map_err(|e| e.to_string())
                    }
                    _ => Ok(()),
                }
            })
        };
        if let Err(e) = result {
            // Exiting non-zero makes mpirun end the whole job.
            eprintln!("worker failed on rank {rank}: {e}");
            std::process::exit(1);
        }
        println!("worker passed on rank {rank}");
    }
}
