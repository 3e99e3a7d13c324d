//! Errors a backend reports about its device.

/// A failure of the device behind a backend.
///
/// Shape and index misuse are contract violations and panic instead; these errors are what a
/// caller cannot prevent: a device that vanished or ran out of memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No usable device (for example, no GPU adapter) was found.
    #[error("no usable device: {0}")]
    NoDevice(String),
    /// The device was lost while work was in flight; the tensors on it are gone.
    #[error("device lost: {0}; recreate the backend and reload parameters from a checkpoint")]
    DeviceLost(String),
    /// The device could not allocate memory.
    #[error("device out of memory: {0}; reduce the batch size or model width")]
    OutOfMemory(String),
    /// Any other failure reported by the device driver.
    #[error("device error: {0}")]
    Device(String),
}
