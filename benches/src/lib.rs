//! Benchmarks for modula, run through criterion by `cargo xtask bench`.
//!
//! The library part holds only what several bench targets share; each bench lives in
//! `benches/<name>.rs` and `cargo xtask bench` turns criterion's estimates into JSON figures
//! under `target/bench/`.

/// Every bench binary links this crate, so this allocator serves them all; it matches the
/// `modula` binary's, so benches measure what training runs see.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS, as the `modula` binary does, so that
/// benches do not time page faults on every iteration's temporaries. Call it first in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets one integer option; called before the bench starts any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Floating-point operations of a `[m x k] * [k x n]` matrix product, counting a fused
/// multiply-add as two operations (the convention BLAS throughput figures use).
pub fn gemm_flops(m: usize, k: usize, n: usize) -> u64 {
    2 * m as u64 * k as u64 * n as u64
}

/// Deterministic, non-trivial test data of length `len`.
///
/// Benchmarks must not depend on a random-number crate's version, and constant data could let a
/// kernel take shortcuts, so this is a small linear congruential sequence in `[-1, 1)`.
pub fn bench_data(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// `target/` of the workspace: `CARGO_TARGET_DIR`, or three levels above the running bench
/// binary (`target/<profile>/deps/<bench>-<hash>`).
fn target_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(dir.into());
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}

/// Writes `value` as JSON to `target/bench/{name}`, where `cargo xtask bench` reads what a
/// bench records besides criterion's timings (the wgpu adapter, the modular bench's paired
/// ratios). A failure is reported on stderr rather than aborting the bench: its timings are
/// still written.
pub fn write_side_file(name: &str, value: &serde_json::Value) {
    let Some(dir) = target_dir().map(|t| t.join("bench")) else {
        eprintln!("bench: cannot locate target/; {name} not written");
        return;
    };
    let path = dir.join(name);
    let text = format!("{value:#}\n");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("bench: cannot write {}: {e}", path.display());
    }
}

/// The memory floor of a layer step (two reads and one write of its weights).
pub mod floor;
/// External BLAS peers and the paired rounds that compare them with modula.
pub mod peer;
