//! A WGSL compute backend for modula on [wgpu](https://wgpu.rs): the same
//! [`Backend`](modula_tensor::Backend) trait as the CPU backend, running on Vulkan, Metal or
//! DX12 (and on software adapters such as Mesa's lavapipe, which is how CI tests it).
//!
//! - [`Wgpu`]: the backend. It owns a device and queue; tensors ([`WgpuTensor`]) live in
//!   device buffers and move only through `upload` and `download`.
//! - Work is recorded, not executed, by each operation: dispatches go into one command
//!   encoder (inside one compute pass where possible) and are submitted to the queue together
//!   at the next download or synchronize, or when a batch fills up.
//! - Kernels are WGSL files, one per op family ([`shaders`]), compiled once per entry point
//!   into a cached pipeline. Workgroup sizes are WGSL `override` constants set from
//!   [`WgpuOptions`].
//! - Device failures (validation, out of memory, a lost device) are captured by callbacks
//!   and returned by the next `download` or `synchronize` as a
//!   [`BackendError`].
//!
//! This crate is the only one in the workspace that names wgpu types; everything else is
//! generic over `Backend`.
//!
//! ```
//! use modula_tensor::{Backend, UnaryOp};
//! use modula_wgpu::Wgpu;
//!
//! let gpu = match Wgpu::new() {
//!     Ok(gpu) => gpu,
//!     Err(e) => {
//!         // No adapter on this machine: nothing to demonstrate.
//!         eprintln!("skipped: {e}");
//!         return Ok(());
//!     }
//! };
//! let x = gpu.upload([1, 3], &[-1.0, 0.0, 2.0]);
//! let y = gpu.unary(UnaryOp::Relu, &x);
//! assert_eq!(gpu.download(&y)?, vec![0.0, 0.0, 2.0]);
//! # Ok::<(), modula_tensor::BackendError>(())
//! ```

mod backend;
mod device;
pub mod shaders;
mod tensor;
pub mod testing;

use std::sync::Arc;

use modula_tensor::BackendError;

pub use device::{AdapterSummary, DeviceKind, WgpuOptions};
pub use tensor::WgpuTensor;

/// The wgpu backend: a handle to one device, its queue and its pipeline cache.
///
/// Cloning is cheap and shares the device (the trait requires `Clone` so that layers can
/// keep a backend handle); tensors are never shared between clones implicitly.
#[derive(Clone)]
pub struct Wgpu {
    inner: Arc<device::Inner>,
}

impl std::fmt::Debug for Wgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Wgpu {
    /// A backend on the best adapter found: a discrete GPU, then an integrated, virtual or
    /// other one, then a software adapter.
    ///
    /// # Errors
    /// [`BackendError::NoDevice`] when no adapter with compute shaders exists or the device
    /// cannot be opened.
    pub fn new() -> Result<Wgpu, BackendError> {
        Wgpu::with_options(WgpuOptions::default())
    }

    /// A backend with explicit [`WgpuOptions`].
    ///
    /// # Errors
    /// As [`Wgpu::new`], and when the device cannot run the requested workgroup sizes.
    ///
    /// # Panics
    /// If `workgroup_size` is not a power of two or `matmul_tile` is zero.
    pub fn with_options(options: WgpuOptions) -> Result<Wgpu, BackendError> {
        Ok(Wgpu {
            inner: Arc::new(device::Inner::new(options)?),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// Whether the adapter is a software rasteriser (timings are then CPU figures).
    pub fn is_software(&self) -> bool {
        self.inner.summary.is_software()
    }

    /// The options the backend was created with.
    pub fn options(&self) -> &WgpuOptions {
        &self.inner.options
    }
}
