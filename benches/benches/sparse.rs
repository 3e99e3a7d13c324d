//! The sparse engine against dense GEMM, sprs and scipy.sparse, on the same machine in the
//! same run: `S [n x 1024]` times `W [1024 x 1024]`, n in {1, 32, 256, 1024}, sparsity in
//! {0, 50, 70, 80, 90, 95, 99}%, random (independent zeros) and block (blocks of 32 neurons
//! zero across blocks of 32 rows) patterns.
//!
//! Every point is timed in paired rounds: in each round, each measured step (the sparse
//! forward with and without building the sparse form, the dense forward, the sparse and dense
//! forward+backward, the sparse forward on one thread, sprs's and scipy's CSR products) runs
//! back to back in a rotating order, and the medians over rounds of the times and of the
//! ratios go to `target/bench/sparse-paired.json`, which `cargo xtask bench sparse` turns into
//! `target/bench/sparse.json`. scipy runs in a python3 child that times its product when
//! asked, so its rounds interleave with the others; without scipy its fields are null.
//!
//! Criterion itself times only the headline point (n = 256, 95% random zeros), sparse and
//! dense, so that the xtask's usual reading of criterion results has something to read.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use modula_cpu::gemm::Parallelism;
use modula_cpu::sparse::{self as kernels, Isa};
use modula_cpu::{Cpu, Team};
use modula_sparse::{BlockSparse, Csr, Select, SparseBackend};
use modula_tensor::{Backend, ReduceOp, Transpose, UnaryOp};
use serde_json::{Value, json};

const K: usize = 1024;
const M: usize = 1024;
const ROWS: [usize; 4] = [1, 32, 256, 1024];
const SPARSITY: [f64; 7] = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99];
/// Neurons per column block, and rows per row block, of the block pattern.
const BLOCK: usize = 32;
/// Paired rounds per point (odd, for a median).
const ROUNDS: usize = 5;
/// Each timed step repeats until it lasts at least this long.
const MIN_SAMPLE: Duration = Duration::from_millis(8);

/// A uniform value in `[0, 1)` from a 64-bit xorshift state.
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// A ReLU-like activation `[n x K]`: positive values, zero with probability `sparsity`
/// (random), or in whole `BLOCK x BLOCK` blocks, a `sparsity` fraction of the column blocks of
/// every row block on average (block).
fn activation(n: usize, sparsity: f64, block: bool, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut x: Vec<f32> = (0..n * K)
        .map(|_| 0.05 + uniform(&mut state) as f32)
        .collect();
    if !block {
        for v in &mut x {
            if uniform(&mut state) < sparsity {
                *v = 0.0;
            }
        }
        return x;
    }
    let col_blocks = K / BLOCK;
    for r0 in (0..n).step_by(BLOCK) {
        // Randomised rounding of the number of zero blocks, so that the expected fraction of
        // zeros is `sparsity` even where it is not a multiple of 1/32 (99% is 31.68 blocks).
        let exact = sparsity * col_blocks as f64;
        let zero_blocks = exact as usize + usize::from(uniform(&mut state) < exact.fract());
        // A random choice of `zero_blocks` column blocks (a partial Fisher-Yates shuffle).
        let mut order: Vec<usize> = (0..col_blocks).collect();
        for i in 0..zero_blocks {
            let j = i + (uniform(&mut state) * (col_blocks - i) as f64) as usize;
            order.swap(i, j);
        }
        for &c in &order[..zero_blocks] {
            for i in r0..(r0 + BLOCK).min(n) {
                x[i * K + c * BLOCK..][..BLOCK].fill(0.0);
            }
        }
    }
    x
}

/// Seconds per call of `step`, over `reps` calls.
fn seconds(reps: usize, step: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        step();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

/// scipy.sparse in a python3 child: it loads each point's activation as a `csr_matrix` and
/// times `S @ W` when asked, so that its rounds interleave with ours.
struct Scipy {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: std::path::PathBuf,
}

const SCIPY_SERVER: &str = r#"
import sys, time
import numpy as np, scipy, scipy.sparse as sp
d, k, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = np.fromfile(d + "/w.bin", dtype=np.float32).reshape(k, m)
print(scipy.__version__, flush=True)
s = None
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "load":
        n = int(cmd[1])
        s = sp.csr_matrix(np.fromfile(d + "/x.bin", dtype=np.float32).reshape(n, k))
        s @ w
        print("ok", flush=True)
    elif cmd[0] == "time":
        reps = int(cmd[1])
        t0 = time.perf_counter()
        for _ in range(reps):
            s @ w
        print((time.perf_counter() - t0) / reps, flush=True)
"#;

impl Scipy {
    /// The child, or `None` (with the reason on stderr) without python3 and scipy.
    fn start(w: &[f32]) -> Option<(Scipy, String)> {
        let dir = std::env::temp_dir().join(format!("modula-sparse-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("w.bin"), bytes(w)).ok()?;
        let mut child = Command::new("python3")
            .args(["-c", SCIPY_SERVER])
            .arg(&dir)
            .args([K.to_string(), M.to_string()])
            // One thread, like sprs; scipy's CSR product is single-threaded anyway.
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut version = String::new();
        if stdout.read_line(&mut version).ok()? == 0 {
            eprintln!("sparse bench: python3 with scipy is not available; scipy_s stays null");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let scipy = Scipy {
            child,
            stdin,
            stdout,
            dir,
        };
        Some((scipy, version.trim().to_owned()))
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("the scipy child reads its commands");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("the scipy child answers");
        answer.trim().to_owned()
    }

    fn load(&mut self, x: &[f32], n: usize) {
        std::fs::write(self.dir.join("x.bin"), bytes(x)).expect("write the activation for scipy");
        assert_eq!(self.ask(&format!("load {n}")), "ok");
    }

    fn time(&mut self, reps: usize) -> f64 {
        let answer = self.ask(&format!("time {reps}"));
        answer.parse().expect("the scipy child prints seconds")
    }
}

impl Drop for Scipy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Read bandwidth in bytes per second of a pass over `len` floats on `threads` threads (the
/// AVX-512 count of non-zeros reads every element and does almost nothing else), best of
/// several passes.
fn read_bandwidth(cpu: &Cpu, len: usize) -> f64 {
    let data = modula_benches::bench_data(len, 3);
    let team = Team::new(cpu.threads());
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = seconds(1, &mut || {
            black_box(kernels::count_kept(
                Isa::detect(),
                &data,
                Select::NONZERO,
                Parallelism::Team(&team),
            ));
        });
        best = best.min(t);
    }
    (len * 4) as f64 / best
}

/// One point's measured steps, by name, in the order of the JSON fields.
const STEPS: [&str; 8] = [
    "sparse_forward_s",
    "sparse_forward_build_s",
    "dense_forward_s",
    "sparse_fwd_bwd_s",
    "dense_fwd_bwd_s",
    "sparse_forward_t1_s",
    "sprs_s",
    "scipy_s",
];

/// The sparse operand of a point, in the format its pattern uses.
enum Form {
    Random(Csr),
    Block(BlockSparse),
}

/// Times every step of one point in paired rounds and returns its JSON record.
#[allow(clippy::too_many_arguments)]
fn point(
    cpu: &Cpu,
    cpu1: &Cpu,
    scipy: &mut Option<Scipy>,
    n: usize,
    sparsity: f64,
    block: bool,
    w_host: &[f32],
    w: &<Cpu as Backend>::Tensor,
    bias: &<Cpu as Backend>::Tensor,
) -> Value {
    let x_host = activation(
        n,
        sparsity,
        block,
        (n as u64) << 8 | (sparsity * 100.0) as u64,
    );
    let x = cpu.upload([n, K], &x_host);
    let dy = cpu.upload([n, M], &modula_benches::bench_data(n * M, 5));
    let form = if block {
        Form::Block(cpu.sparsify_blocks(&x, BLOCK, BLOCK, Select::Relu).unwrap())
    } else {
        Form::Random(cpu.sparsify(&x, Select::Relu).unwrap())
    };
    let csr = Csr::from_dense(n, K, &x_host, Select::Relu);
    let sprs_s = csr.to_sprs();
    let w_nd = ndarray::Array2::from_shape_vec((K, M), w_host.to_vec()).unwrap();
    if let Some(s) = scipy.as_mut() {
        s.load(&x_host, n);
    }
    // Every step writes to an output of its own, allocated once, except the layer steps,
    // which allocate theirs as a layer does.
    let outputs = || cpu.zeros([n, M]);
    let (mut y0, mut y1, mut y2, mut y5) = (outputs(), outputs(), outputs(), outputs());
    let (mut dw3, mut dw4) = (cpu.zeros([K, M]), cpu.zeros([K, M]));

    let forward = |b: &Cpu, form: &Form, y: &mut <Cpu as Backend>::Tensor| match form {
        Form::Random(s) => b.sparse_matmul(s, w, Some(bias), 0.0, y),
        Form::Block(s) => b.block_matmul(s, w, Some(bias), 0.0, y),
    };
    let build = |b: &Cpu| {
        if block {
            Form::Block(b.sparsify_blocks(&x, BLOCK, BLOCK, Select::Relu).unwrap())
        } else {
            Form::Random(b.sparsify(&x, Select::Relu).unwrap())
        }
    };
    let form = &form;
    let mut steps: Vec<Box<dyn FnMut() + '_>> = vec![
        Box::new(|| forward(cpu, form, &mut y0)),
        Box::new(|| {
            let f = build(cpu);
            forward(cpu, &f, &mut y1);
        }),
        Box::new(|| {
            cpu.matmul(1.0, &x, Transpose::No, w, Transpose::No, 0.0, &mut y2);
            cpu.add_row(&mut y2, bias);
        }),
        // The sparse layer's whole step: build, forward, the weight gradient from the
        // transpose, the bias gradient and the input gradient at the pattern.
        Box::new(|| {
            let f = build(cpu);
            let y = match &f {
                Form::Random(s) => cpu.sparse_linear(s, w, Some(bias)),
                Form::Block(s) => cpu.block_linear(s, w, Some(bias)),
            };
            let db = cpu.reduce_cols(ReduceOp::Sum, &dy);
            let dx = match &f {
                Form::Random(s) => {
                    cpu.sparse_matmul(&s.transpose(), &dy, None, 0.0, &mut dw3);
                    cpu.sampled_matmul_t(s, &dy, w)
                }
                Form::Block(s) => {
                    cpu.block_matmul(&s.transpose(), &dy, None, 0.0, &mut dw3);
                    cpu.block_sampled_matmul_t(s, &dy, w)
                }
            };
            black_box((y, db, dx));
        }),
        // The dense layer's: forward, x^T dY, the bias gradient, dY W^T through the ReLU.
        Box::new(|| {
            let mut y = cpu.zeros([n, M]);
            cpu.matmul(1.0, &x, Transpose::No, w, Transpose::No, 0.0, &mut y);
            cpu.add_row(&mut y, bias);
            cpu.matmul(1.0, &x, Transpose::Yes, &dy, Transpose::No, 0.0, &mut dw4);
            let db = cpu.reduce_cols(ReduceOp::Sum, &dy);
            let mut dx = cpu.zeros([n, K]);
            cpu.matmul(1.0, &dy, Transpose::No, w, Transpose::Yes, 0.0, &mut dx);
            black_box((y, db, cpu.unary_backward(UnaryOp::Relu, &x, &x, &dx)));
        }),
        Box::new(|| forward(cpu1, form, &mut y5)),
        Box::new(|| {
            black_box(&sprs_s * &w_nd);
        }),
    ];
    // Warm up, then size every step's sample.
    let mut reps: Vec<usize> = steps
        .iter_mut()
        .map(|step| {
            let once = seconds(1, step.as_mut());
            ((MIN_SAMPLE.as_secs_f64() / once).ceil() as usize).max(1)
        })
        .collect();
    if let Some(s) = scipy.as_mut() {
        let once = s.time(1);
        reps.push(((MIN_SAMPLE.as_secs_f64() / once).ceil() as usize).max(1));
    }
    let count = reps.len();
    let mut times = vec![Vec::with_capacity(ROUNDS); STEPS.len()];
    for round in 0..ROUNDS {
        // Rotate the order, so that no step always follows the same one.
        for i in 0..count {
            let step = (i + round) % count;
            let t = if step < steps.len() {
                seconds(reps[step], steps[step].as_mut())
            } else {
                scipy.as_mut().expect("counted").time(reps[step])
            };
            times[step].push(t);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Per-round ratios, so that the machine's drift cancels out of them.
    let ratio = |num: usize, den: usize| -> Value {
        let mut r: Vec<f64> = (0..ROUNDS)
            .filter_map(|i| Some(times.get(num)?.get(i)? / times.get(den)?.get(i)?))
            .collect();
        if r.len() < ROUNDS {
            Value::Null
        } else {
            json!(median(&mut r))
        }
    };
    let mut record = json!({
        "n": n,
        "sparsity": sparsity,
        "pattern": if block { "block" } else { "random" },
        "density": csr.density(),
        "ratios": {
            "forward": ratio(2, 0),
            "forward_build": ratio(2, 1),
            "fwd_bwd": ratio(4, 3),
            "sprs_vs_sparse": ratio(6, 0),
            "sprs_vs_sparse_t1": ratio(6, 5),
            "scipy_vs_sparse": ratio(7, 0),
            "scipy_vs_sparse_t1": ratio(7, 5),
        },
    });
    for (i, name) in STEPS.iter().enumerate() {
        let value = if times[i].is_empty() {
            Value::Null
        } else {
            json!(median(&mut times[i]))
        };
        record[*name] = value;
    }
    drop(steps);
    if let Form::Block(s) = form {
        // The memory floor: each needed weight block read once (the union over row blocks)
        // and the output written once.
        let mut needed = vec![false; s.col_blocks()];
        for r in 0..s.row_blocks() {
            for &c in s.active(r) {
                needed[c as usize] = true;
            }
        }
        let rows = needed.iter().filter(|&&b| b).count() * BLOCK;
        record["floor_bytes"] = json!((rows * M + n * M) * 4);
        record["block_density"] = json!(s.block_density());
    }
    record
}

fn paired(cpu: &Cpu) {
    let cpu1 = Cpu::with_threads(1);
    let w_host = modula_benches::bench_data(K * M, 1);
    let w = cpu.upload([K, M], &w_host);
    let bias = cpu.upload([1, M], &modula_benches::bench_data(M, 2));
    let (mut scipy, scipy_version) = match Scipy::start(&w_host) {
        Some((s, v)) => (Some(s), Value::String(v)),
        None => (None, Value::Null),
    };
    let mut points = Vec::new();
    for block in [false, true] {
        for &n in &ROWS {
            for &sparsity in &SPARSITY {
                let p = point(
                    cpu, &cpu1, &mut scipy, n, sparsity, block, &w_host, &w, &bias,
                );
                eprintln!("sparse bench: {p}");
                points.push(p);
            }
        }
    }
    let record = json!({
        "threads": cpu.threads(),
        "rounds": ROUNDS,
        "isa": format!("{:?}", Isa::detect()),
        "scipy": scipy_version,
        "sprs": "0.11 (CsMat * Array2, single-threaded)",
        "read_bandwidth_4mib": read_bandwidth(cpu, K * M),
        "read_bandwidth_256mib": read_bandwidth(cpu, 64 << 20),
        "points": points,
    });
    modula_benches::write_side_file("sparse-paired.json", &record);
}

fn headline(c: &mut Criterion, cpu: &Cpu) {
    let n = 256;
    let x = cpu.upload([n, K], &activation(n, 0.95, false, 11));
    let w = cpu.upload([K, M], &modula_benches::bench_data(K * M, 1));
    let mut group = c.benchmark_group("sparse");
    group.bench_function("sparse_forward_build/n256_s95", |b| {
        b.iter(|| {
            let s = cpu.sparsify(&x, Select::Relu).unwrap();
            black_box(cpu.sparse_linear(&s, &w, None))
        })
    });
    group.bench_function("dense_forward/n256", |b| {
        b.iter(|| {
            let mut y = cpu.zeros([n, M]);
            cpu.matmul(1.0, &x, Transpose::No, &w, Transpose::No, 0.0, &mut y);
            black_box(y)
        })
    });
    group.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated public function
// has no documentation and would trip the workspace's `missing_docs` lint.
fn main() {
    modula_benches::keep_freed_memory();
    let cpu = Cpu::new();
    let mut criterion = Criterion::default().configure_from_args();
    headline(&mut criterion, &cpu);
    criterion.final_summary();
    // `cargo bench` also runs bench targets in test mode (`--bench` absent): skip the long
    // paired series there. It runs after criterion, so that its side file is newer than
    // criterion's results (the xtask refuses an older one as stale).
    if std::env::args().any(|a| a == "--bench") {
        paired(&cpu);
    }
}
