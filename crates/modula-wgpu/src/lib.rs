#![doc = include_str!("../README.md")]

mod backend;
mod device;
pub mod shaders;
mod sparse;
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
