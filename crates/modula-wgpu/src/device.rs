//! The device context: adapter selection, error capture, the pipeline cache and the batch of
//! recorded work that is submitted to the queue in one go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use modula_tensor::{BackendError, Shape};
use wgpu::util::DeviceExt;

use crate::shaders::{Kernel, PARAMS_BYTES, ShaderFile};
use crate::tensor::WgpuTensor;

/// What kind of device an adapter drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A GPU with its own memory.
    DiscreteGpu,
    /// A GPU sharing memory with the CPU.
    IntegratedGpu,
    /// A GPU exposed through a virtualisation layer.
    VirtualGpu,
    /// A software rasteriser running on the CPU (for example Mesa's lavapipe). Its timings
    /// are CPU figures, never GPU figures.
    Cpu,
    /// Anything the driver did not classify.
    Other,
}

impl DeviceKind {
    fn from_wgpu(t: wgpu::DeviceType) -> Self {
        match t {
            wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu,
            wgpu::DeviceType::Cpu => DeviceKind::Cpu,
            wgpu::DeviceType::Other => DeviceKind::Other,
        }
    }

    /// Preference when several adapters are present: real GPUs first, software last.
    fn rank(self) -> u8 {
        match self {
            DeviceKind::DiscreteGpu => 0,
            DeviceKind::IntegratedGpu => 1,
            DeviceKind::VirtualGpu => 2,
            DeviceKind::Other => 3,
            DeviceKind::Cpu => 4,
        }
    }

    /// A stable lower-case name, as recorded in bench figures.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::DiscreteGpu => "discrete_gpu",
            DeviceKind::IntegratedGpu => "integrated_gpu",
            DeviceKind::VirtualGpu => "virtual_gpu",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Other => "other",
        }
    }
}

/// What the backend runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `NVIDIA GeForce RTX 4090` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API: `vulkan`, `metal` or `dx12`.
    pub backend: String,
    /// The kind of device.
    pub device_type: DeviceKind,
    /// Driver name.
    pub driver: String,
    /// Driver version details.
    pub driver_info: String,
}

impl AdapterSummary {
    /// Whether this is a software adapter (CPU rendering): its timings are not GPU figures.
    pub fn is_software(&self) -> bool {
        self.device_type == DeviceKind::Cpu
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}",
            self.name,
            self.backend,
            self.device_type.as_str()
        )?;
        if self.is_software() {
            write!(f, ", software adapter")?;
        }
        write!(f, ")")
    }
}

/// Settings of a [`crate::Wgpu`] backend.
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Use only an adapter whose name contains this text (case-insensitive). The environment
    /// variable `MODULA_WGPU_ADAPTER` sets it when this is `None`.
    pub adapter_name: Option<String>,
    /// Whether a software adapter (lavapipe, WARP) may be used when no GPU is found.
    pub allow_software: bool,
    /// Threads per workgroup of the one-dimensional kernels; a power of two no larger than
    /// the device's `max_compute_invocations_per_workgroup`.
    pub workgroup_size: u32,
    /// Threads per side of a matmul workgroup; each computes an 8 x 8 block, so a workgroup
    /// covers an `8 * tile` square of the output.
    pub matmul_tile: u32,
    /// Recorded dispatches after which the batch is submitted even without a download, so
    /// that the device starts working during long host-side sequences.
    pub max_batch: usize,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            adapter_name: None,
            allow_software: true,
            workgroup_size: 256,
            matmul_tile: 16,
            max_batch: 1024,
        }
    }
}

/// Bytes of uniform parameter blocks one batch can hold before it is submitted.
const PARAMS_RING: u64 = 256 * 1024;
/// Bytes of index lists one batch can hold; larger lists get a buffer of their own.
const META_RING: u64 = 4 * 1024 * 1024;
/// Smallest buffer the backend creates: empty tensors still need a bindable buffer.
const MIN_BUFFER: u64 = 16;

/// A binding of a storage buffer for one dispatch.
pub(crate) enum Bind<'a> {
    /// A whole tensor buffer.
    Tensor(&'a WgpuTensor),
    /// An index list previously placed with [`Recorder::indices`].
    Indices(&'a Indices),
    /// A placeholder for a binding this entry point does not use.
    Unused,
}

/// A u32 list on the device, either in this batch's ring or in a buffer of its own.
pub(crate) enum Indices {
    Ring { offset: u64, size: u64 },
    Own(wgpu::Buffer),
}

/// The uniform parameter block of one dispatch: sixteen 32-bit words whose meaning each
/// shader file's `Params` struct gives.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Params([u32; 16]);

impl Params {
    /// Sets word `i` to an unsigned integer.
    pub fn u(mut self, i: usize, v: usize) -> Self {
        self.0[i] = u32::try_from(v).expect("sizes and offsets fit in u32 on the device");
        self
    }

    /// Sets word `i` to a float.
    pub fn f(mut self, i: usize, v: f32) -> Self {
        self.0[i] = v.to_bits();
        self
    }
}

/// Per-file objects shared by the file's pipelines.
struct FileObjects {
    module: wgpu::ShaderModule,
    bind_layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

/// The work recorded since the last submission.
struct Batch {
    // Field order matters: the open pass must end before its encoder is dropped.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Host image of this batch's parameter ring, written to the device right before submit.
    params: Vec<u8>,
    /// Host image of this batch's index ring.
    meta: Vec<u8>,
    dispatches: usize,
}

/// Everything behind the device lock.
struct State {
    batch: Batch,
    files: HashMap<&'static str, FileObjects>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
}

/// Errors reported by wgpu's callbacks, surfaced at the next download or synchronize.
#[derive(Default)]
struct ErrorSink {
    /// The first error since the last report (validation, out of memory, internal).
    first: Option<BackendError>,
    /// Set when the device is lost; every later report fails too.
    lost: Option<String>,
}

pub(crate) struct Inner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub options: WgpuOptions,
    pub limits: wgpu::Limits,
    params_ring: wgpu::Buffer,
    meta_ring: wgpu::Buffer,
    unused_read: wgpu::Buffer,
    unused_write: wgpu::Buffer,
    errors: Arc<Mutex<ErrorSink>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wgpu")
            .field("adapter", &self.summary)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while recording (a contract violation) leaves the batch consistent: the
    // recorder only appends, so the lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn align(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// Picks an adapter: the name filter first, then real GPUs before software ones.
fn choose_adapter(
    adapters: Vec<wgpu::Adapter>,
    options: &WgpuOptions,
) -> Result<wgpu::Adapter, BackendError> {
    let filter = options
        .adapter_name
        .clone()
        .or_else(|| std::env::var("MODULA_WGPU_ADAPTER").ok())
        .map(|s| s.to_lowercase());
    let mut seen = Vec::new();
    let mut best: Option<(u8, wgpu::Adapter)> = None;
    for adapter in adapters {
        let info = adapter.get_info();
        let kind = DeviceKind::from_wgpu(info.device_type);
        seen.push(format!(
            "{} ({:?}, {})",
            info.name,
            info.backend,
            kind.as_str()
        ));
        if filter
            .as_ref()
            .is_some_and(|f| !info.name.to_lowercase().contains(f))
        {
            continue;
        }
        if kind == DeviceKind::Cpu && !options.allow_software {
            continue;
        }
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            continue;
        }
        if best.as_ref().is_none_or(|(r, _)| kind.rank() < *r) {
            best = Some((kind.rank(), adapter));
        }
    }
    best.map(|(_, a)| a).ok_or_else(|| {
        let found = if seen.is_empty() {
            "no adapter at all (is a Vulkan, Metal or DX12 driver installed? On Debian, \
             `apt-get install mesa-vulkan-drivers libvulkan1` provides the lavapipe software \
             adapter)"
                .to_owned()
        } else {
            format!(
                "none of the adapters found matched the options: {}",
                seen.join("; ")
            )
        };
        BackendError::NoDevice(found)
    })
}

impl Inner {
    pub fn new(options: WgpuOptions) -> Result<Inner, BackendError> {
        assert!(
            options.workgroup_size.is_power_of_two(),
            "workgroup_size must be a power of two (the reduction trees halve it)"
        );
        assert!(options.matmul_tile > 0, "matmul_tile must be positive");
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
        if wgpu::Backends::from_env().is_none() {
            // GL has no portable compute story in wgpu; the primary APIs do.
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(desc_backends()));
        let adapter = choose_adapter(adapters, &options)?;
        let info = adapter.get_info();
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: info.backend.to_str().to_owned(),
            device_type: DeviceKind::from_wgpu(info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        };
        // The adapter's own limits: the WebGPU defaults cap storage buffers at 128 MiB,
        // which a 2048-wide layer's activations can exceed.
        let limits = adapter.limits();
        let threads = options
            .workgroup_size
            .max(options.matmul_tile * options.matmul_tile);
        if threads > limits.max_compute_invocations_per_workgroup {
            return Err(BackendError::NoDevice(format!(
                "{} allows {} threads per workgroup, the options need {threads}",
                summary.name, limits.max_compute_invocations_per_workgroup
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("modula"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| BackendError::NoDevice(format!("{}: {e}", summary.name)))?;

        let errors = Arc::new(Mutex::new(ErrorSink::default()));
        let sink = Arc::clone(&errors);
        // wgpu's default handler panics; errors are instead kept for the next download, where
        // the Backend trait reports device failures.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match &e {
                wgpu::Error::OutOfMemory { .. } => BackendError::OutOfMemory(e.to_string()),
                _ => BackendError::Device(e.to_string()),
            };
            lock(&sink).first.get_or_insert(err);
        }));
        let sink = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                lock(&sink).lost.get_or_insert(message);
            }
        });

        let buffer = |label, size, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let params_ring = buffer(
            "modula params",
            PARAMS_RING,
            wgpu::BufferUsages::UNIFORM | copy_dst,
        );
        let meta_ring = buffer(
            "modula indices",
            META_RING,
            wgpu::BufferUsages::STORAGE | copy_dst,
        );
        // Two placeholders: one buffer may not be bound both read-only and writable in one
        // dispatch.
        let unused_read = buffer("modula unused", MIN_BUFFER, wgpu::BufferUsages::STORAGE);
        let unused_write = buffer("modula unused", MIN_BUFFER, wgpu::BufferUsages::STORAGE);
        Ok(Inner {
            device,
            queue,
            summary,
            options,
            limits,
            params_ring,
            meta_ring,
            unused_read,
            unused_write,
            errors,
            state: Mutex::new(State {
                batch: Batch {
                    pass: None,
                    encoder: None,
                    params: Vec::new(),
                    meta: Vec::new(),
                    dispatches: 0,
                },
                files: HashMap::new(),
                pipelines: HashMap::new(),
            }),
        })
    }

    /// Takes the first error reported since the last call; a lost device stays reported.
    pub fn take_error(&self) -> Result<(), BackendError> {
        let mut sink = lock(&self.errors);
        if let Some(msg) = &sink.lost {
            return Err(BackendError::DeviceLost(msg.clone()));
        }
        sink.first.take().map_or(Ok(()), Err)
    }

    /// Records an error found on the host side (for example a tensor larger than the device
    /// allows), to be reported with the device's own errors.
    fn report(&self, err: BackendError) {
        lock(&self.errors).first.get_or_insert(err);
    }

    /// A new zero-filled tensor (WebGPU zero-initialises every buffer).
    pub fn alloc(&self, shape: Shape) -> WgpuTensor {
        let bytes = (shape[0] * shape[1] * 4) as u64;
        WgpuTensor {
            buffer: self.tensor_buffer(bytes, None),
            shape,
        }
    }

    /// A new tensor holding `data`.
    pub fn upload(&self, shape: Shape, data: &[f32]) -> WgpuTensor {
        let bytes = size_of_val(data) as u64;
        WgpuTensor {
            buffer: self.tensor_buffer(bytes, Some(bytemuck::cast_slice(data))),
            shape,
        }
    }

    fn tensor_buffer(&self, bytes: u64, contents: Option<&[u8]>) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let limit = self
            .limits
            .max_buffer_size
            .min(self.limits.max_storage_buffer_binding_size);
        let mut size = align(bytes.max(MIN_BUFFER), 4);
        let mut contents = contents;
        if size > limit {
            // Surfaced at the next download like a driver's out-of-memory; the placeholder
            // keeps the recorded work valid until then.
            self.report(BackendError::OutOfMemory(format!(
                "a tensor of {bytes} bytes exceeds this device's largest storage buffer ({limit} bytes)"
            )));
            size = MIN_BUFFER;
            contents = None;
        }
        match contents {
            Some(data) if !data.is_empty() => {
                let mut padded;
                let data = if data.len() as u64 == size {
                    data
                } else {
                    padded = vec![0u8; size as usize];
                    padded[..data.len()].copy_from_slice(data);
                    &padded[..]
                };
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("modula tensor"),
                        contents: data,
                        usage,
                    })
            }
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("modula tensor"),
                size,
                usage,
                mapped_at_creation: false,
            }),
        }
    }

    /// Starts recording: the device lock, through which every op records its work.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            inner: self,
            state: lock(&self.state),
        }
    }

    /// Waits for all submitted work.
    pub fn wait(&self) -> Result<(), BackendError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| BackendError::Device(format!("waiting for the device: {e}")))?;
        Ok(())
    }

    /// Copies a tensor to the host.
    pub fn download(&self, t: &WgpuTensor) -> Result<Vec<f32>, BackendError> {
        let bytes = (t.len() * 4) as u64;
        if bytes == 0 || t.buffer.size() < bytes {
            // Nothing to read, or a placeholder for a tensor that could not be allocated
            // (whose error `take_error` reports).
            self.synchronize()?;
            return Ok(vec![0.0; t.len()]);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modula download"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.recorder();
            rec.encoder()
                .copy_buffer_to_buffer(&t.buffer, 0, &staging, 0, bytes);
            rec.submit();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            // The receiver only disappears if download itself unwound.
            let _ = tx.send(r);
        });
        self.wait()?;
        self.take_error()?;
        let mapped = rx
            .recv()
            .map_err(|_| BackendError::Device("the map callback never ran".into()))?;
        mapped.map_err(|e| BackendError::Device(format!("reading back a tensor: {e}")))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| BackendError::Device(format!("reading back a tensor: {e}")))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Submits pending work, waits for it and reports device failures.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.recorder().submit();
        self.wait()?;
        self.take_error()
    }
}

fn desc_backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}

/// Records work into the current batch while holding the device lock.
pub(crate) struct Recorder<'a> {
    inner: &'a Inner,
    state: MutexGuard<'a, State>,
}

impl Recorder<'_> {
    /// The batch's encoder outside any compute pass (for copies).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        let batch = &mut self.state.batch;
        // Ending the pass releases the encoder it locked.
        batch.pass = None;
        batch.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("modula batch"),
                })
        })
    }

    /// Submits the batch: its parameter and index rings are written first, so that the
    /// queue applies them before the recorded commands.
    pub fn submit(&mut self) {
        let batch = &mut self.state.batch;
        batch.pass = None;
        let Some(encoder) = batch.encoder.take() else {
            return;
        };
        if !batch.params.is_empty() {
            self.inner
                .queue
                .write_buffer(&self.inner.params_ring, 0, &batch.params);
        }
        if !batch.meta.is_empty() {
            self.inner
                .queue
                .write_buffer(&self.inner.meta_ring, 0, &batch.meta);
        }
        batch.params.clear();
        batch.meta.clear();
        batch.dispatches = 0;
        self.inner.queue.submit([encoder.finish()]);
    }

    /// Places a u32 list on the device for the dispatches recorded next.
    pub fn indices(&mut self, data: &[u32]) -> Indices {
        // Bindings need a non-empty range.
        let data: &[u32] = if data.is_empty() { &[0] } else { data };
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let size = bytes.len() as u64;
        if size > META_RING / 4 {
            return Indices::Own(self.inner.device.create_buffer_init(
                &wgpu::util::BufferInitDescriptor {
                    label: Some("modula indices"),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                },
            ));
        }
        let alignment = self.inner.limits.min_storage_buffer_offset_alignment as u64;
        let offset = align(self.state.batch.meta.len() as u64, alignment);
        // The dispatch that reads these indices must land in the same batch (the ring is
        // rewritten for the next one), so the batch is submitted now if that dispatch
        // would not fit.
        if offset + size > META_RING || self.batch_full() {
            self.submit();
            return self.indices(data);
        }
        let meta = &mut self.state.batch.meta;
        meta.resize(offset as usize, 0);
        meta.extend_from_slice(bytes);
        Indices::Ring { offset, size }
    }

    fn params_offset(&self) -> u64 {
        let alignment = u64::from(self.inner.limits.min_uniform_buffer_offset_alignment);
        align(self.state.batch.params.len() as u64, alignment)
    }

    /// Whether one more dispatch would overflow the parameter ring or the batch size.
    fn batch_full(&self) -> bool {
        self.params_offset() + PARAMS_BYTES > PARAMS_RING
            || self.state.batch.dispatches >= self.inner.options.max_batch
    }

    fn objects(&mut self, file: &'static ShaderFile) -> &FileObjects {
        let device = &self.inner.device;
        self.state.files.entry(file.name).or_insert_with(|| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file.name),
                source: wgpu::ShaderSource::Wgsl(file.source.into()),
            });
            let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
                },
                count: None,
            }];
            entries.extend(
                file.read_only
                    .iter()
                    .enumerate()
                    .map(|(i, &ro)| storage(i as u32 + 1, ro)),
            );
            let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(file.name),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(file.name),
                bind_group_layouts: &[Some(&bind_layout)],
                immediate_size: 0,
            });
            FileObjects {
                module,
                bind_layout,
                pipeline_layout,
            }
        })
    }

    /// The cached pipeline of a kernel, created on first use.
    fn pipeline(&mut self, kernel: Kernel) -> wgpu::ComputePipeline {
        if let Some(p) = self.state.pipelines.get(&kernel) {
            return p.clone();
        }
        let size = if kernel.file.workgroup_override == "TILE" {
            self.inner.options.matmul_tile
        } else {
            self.inner.options.workgroup_size
        };
        let constants = [(kernel.file.workgroup_override, f64::from(size))];
        let inner = self.inner;
        let objects = self.objects(kernel.file);
        let pipeline = inner
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: Some(&objects.pipeline_layout),
                module: &objects.module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.state.pipelines.insert(kernel, pipeline.clone());
        pipeline
    }

    /// Records one dispatch of `kernel` over `groups` workgroups.
    ///
    /// `binds` fill the storage bindings `1..` in order; a `Bind::Unused` gets the
    /// placeholder buffer of the binding's access mode.
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        params: Params,
        binds: &[Bind<'_>],
        groups: [u32; 3],
    ) {
        assert_eq!(
            binds.len(),
            kernel.file.read_only.len(),
            "{}: wrong number of bindings",
            kernel.entry
        );
        if groups.contains(&0) {
            return;
        }
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "{}: {groups:?} workgroups exceed the device's {max} per dimension",
            kernel.entry
        );
        // A dispatch reading ring indices was given room by `indices`; submitting here would
        // separate it from them.
        let uses_ring = binds
            .iter()
            .any(|b| matches!(b, Bind::Indices(Indices::Ring { .. })));
        if !uses_ring && self.batch_full() {
            self.submit();
        }
        let offset = self.params_offset();
        let p = &mut self.state.batch.params;
        p.resize(offset as usize, 0);
        p.extend_from_slice(bytemuck::cast_slice(&params.0));

        let pipeline = self.pipeline(kernel);
        let inner = self.inner;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &inner.params_ring,
                offset,
                size: wgpu::BufferSize::new(PARAMS_BYTES),
            }),
        }];
        for (i, (bind, &read_only)) in binds.iter().zip(kernel.file.read_only).enumerate() {
            let resource = match bind {
                Bind::Tensor(t) => t.buffer.as_entire_binding(),
                Bind::Indices(Indices::Own(b)) => b.as_entire_binding(),
                Bind::Indices(Indices::Ring { offset, size }) => {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &inner.meta_ring,
                        offset: *offset,
                        size: wgpu::BufferSize::new(*size),
                    })
                }
                Bind::Unused if read_only => inner.unused_read.as_entire_binding(),
                Bind::Unused => inner.unused_write.as_entire_binding(),
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource,
            });
        }
        let layout = &self.objects(kernel.file).bind_layout;
        let bind_group = inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout,
            entries: &entries,
        });

        let batch = &mut self.state.batch;
        batch.dispatches += 1;
        if batch.pass.is_none() {
            let encoder = batch.encoder.get_or_insert_with(|| {
                inner
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("modula batch"),
                    })
            });
            batch.pass = Some(
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("modula"),
                        timestamp_writes: None,
                    })
                    .forget_lifetime(),
            );
        }
        let pass = batch.pass.as_mut().expect("just opened");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
}
