//! Helpers for tests and benches that need a device: skip politely where there is none,
//! fail under CI.

use std::sync::OnceLock;

use crate::Wgpu;

/// Whether the environment says this is a CI run (`CI=true` or `CI=1`), where a missing
/// adapter is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// One backend shared by every test of a test binary (opening a device takes a while on
/// software adapters), or `None` after printing why `test` is skipped.
///
/// # Panics
/// Under CI ([`in_ci`]) when no adapter is available, so that a CI machine without a Vulkan
/// driver cannot pass by skipping every device test.
pub fn backend_or_skip(test: &str) -> Option<Wgpu> {
    static SHARED: OnceLock<Result<Wgpu, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Wgpu::new().map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu.clone()),
        Err(why) if in_ci() => {
            panic!("{test}: no wgpu adapter under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("{test}: skipped, no wgpu adapter: {why}");
            None
        }
    }
}
