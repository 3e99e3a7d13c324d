//! The one place a backend type is chosen: [`on_backend`] opens the CPU or the wgpu backend a
//! command asks for and runs the command's generic body on it.

use modula_cpu::Cpu;
use modula_run::{BackendKind, DeviceInfo, RunError, run_error};
use modula_sparse::SparseBackend;
use modula_wgpu::Wgpu;

/// The backend, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// The CPU backend.
    Cpu,
    /// wgpu's best adapter (Vulkan, Metal or DX12; a GPU before a software adapter).
    Wgpu,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> BackendKind {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Wgpu => BackendKind::Wgpu,
        }
    }
}

/// Parses `--threads`: a count from 1 to the machine's parallelism. More threads than the
/// machine runs at once only contend, and a large count fails to start its threads.
///
/// # Errors
/// A message with the allowed range (clap reports it as a usage error, status 2).
pub fn threads_arg(text: &str) -> Result<u64, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    match text.parse::<u64>() {
        Ok(n) if (1..=cores).contains(&n) => Ok(n),
        _ => Err(format!(
            "use a thread count from 1 to {cores}, the threads this machine runs at once"
        )),
    }
}

/// A command body written once, generic over the backend; [`on_backend`] runs it on the
/// backend a configuration names, so each command has a single code path monomorphised for
/// [`Cpu`] and [`Wgpu`].
pub trait OnBackend {
    /// Runs the command on `backend`, which `device` describes.
    ///
    /// # Errors
    /// The command's own errors.
    fn run<B: SparseBackend>(self, backend: B, device: DeviceInfo) -> Result<(), RunError>;
}

/// Opens the backend `kind` names (the CPU with `threads` threads, or the best wgpu adapter)
/// and runs `job` on it.
///
/// # Errors
/// A run error when `--backend wgpu` finds no usable adapter, and `job`'s own errors.
pub fn on_backend(kind: BackendKind, threads: usize, job: impl OnBackend) -> Result<(), RunError> {
    match kind {
        BackendKind::Cpu => job.run(Cpu::with_threads(threads), DeviceInfo::cpu()),
        BackendKind::Wgpu => {
            let gpu = open_wgpu()?;
            let adapter = gpu.adapter();
            let device = DeviceInfo {
                backend: BackendKind::Wgpu,
                adapter: Some(adapter.name.clone()),
                adapter_type: Some(adapter.device_type.as_str().to_string()),
            };
            job.run(gpu, device)
        }
    }
}

/// Opens the wgpu backend, turning a missing adapter into an error that says what to install.
fn open_wgpu() -> Result<Wgpu, RunError> {
    Wgpu::new().map_err(|e| {
        let filter = std::env::var("MODULA_WGPU_ADAPTER")
            .map(|name| {
                format!(
                    " MODULA_WGPU_ADAPTER={name:?} is set: unset it or name an adapter that exists."
                )
            })
            .unwrap_or_default();
        run_error(format!(
            "--backend wgpu: {e}.{filter} Install a Vulkan, Metal or DX12 driver: on Debian, \
             `apt-get install mesa-vulkan-drivers libvulkan1` provides the lavapipe software \
             adapter (slow; a GPU's own driver is the fast path). Or use --backend cpu"
        ))
    })
}
