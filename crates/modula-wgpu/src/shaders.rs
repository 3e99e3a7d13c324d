//! The WGSL kernels, one file per op family, embedded at compile time.
//!
//! Every file binds a uniform parameter block of [`PARAMS_BYTES`] bytes at `@binding(0)` of
//! group 0, followed by storage buffers at bindings `1..`. The backend builds one bind group
//! layout per file from [`ShaderFile::read_only`], so every entry point of a file shares it
//! (an entry point that does not use a binding gets a small placeholder buffer there).
//! Workgroup sizes are WGSL `override` constants, set when a pipeline is created.

/// Size in bytes of every kernel's uniform parameter block (sixteen 32-bit words).
pub const PARAMS_BYTES: u64 = 64;

/// One WGSL file and what the backend expects of it.
#[derive(Debug)]
pub struct ShaderFile {
    /// File name under `shaders/`.
    pub name: &'static str,
    /// The WGSL source.
    pub source: &'static str,
    /// Entry points the backend creates pipelines for.
    pub entry_points: &'static [&'static str],
    /// Access of the storage bindings `1..=len`: `true` for `var<storage, read>`, `false`
    /// for `var<storage, read_write>`.
    pub read_only: &'static [bool],
    /// The `override` constant that sets the workgroup size.
    pub workgroup_override: &'static str,
}

/// Dense and grouped tiled matrix products.
pub const MATMUL: ShaderFile = ShaderFile {
    name: "matmul.wgsl",
    source: include_str!("../shaders/matmul.wgsl"),
    entry_points: &["matmul", "grouped"],
    read_only: &[true, true, false, true],
    workgroup_override: "TILE",
};

/// Elementwise ops, their gradients, broadcasts, axpy/scale/fill and column copies.
pub const ELEMENTWISE: ShaderFile = ShaderFile {
    name: "elementwise.wgsl",
    source: include_str!("../shaders/elementwise.wgsl"),
    entry_points: &[
        "unary",
        "unary_backward",
        "binary",
        "binary_backward",
        "fill",
        "scale",
        "axpy",
        "add_row",
        "scale_rows",
        "copy_cols",
    ],
    read_only: &[true, true, true, false, false],
    workgroup_override: "WG",
};

/// Row and column reductions and row-wise dot products.
pub const REDUCE: ShaderFile = ShaderFile {
    name: "reduce.wgsl",
    source: include_str!("../shaders/reduce.wgsl"),
    entry_points: &["reduce_rows", "reduce_cols"],
    read_only: &[true, true, false],
    workgroup_override: "WG",
};

/// Row-wise log-softmax and its gradient.
pub const SOFTMAX: ShaderFile = ShaderFile {
    name: "softmax.wgsl",
    source: include_str!("../shaders/softmax.wgsl"),
    entry_points: &["log_softmax", "log_softmax_backward"],
    read_only: &[true, true, false],
    workgroup_override: "WG",
};

/// Gathers, segmented row sums (scatter-add), column picks.
pub const INDEXING: ShaderFile = ShaderFile {
    name: "indexing.wgsl",
    source: include_str!("../shaders/indexing.wgsl"),
    entry_points: &["gather_rows", "segment_rows", "pick_cols", "add_at_cols"],
    read_only: &[true, true, false],
    workgroup_override: "WG",
};

/// im2col, col2im, max pooling and its gradient.
pub const CONV: ShaderFile = ShaderFile {
    name: "conv.wgsl",
    source: include_str!("../shaders/conv.wgsl"),
    entry_points: &["im2col", "col2im", "max_pool", "max_pool_backward"],
    read_only: &[true, true, false],
    workgroup_override: "WG",
};

/// Adam and SGD updates.
pub const OPTIM: ShaderFile = ShaderFile {
    name: "optim.wgsl",
    source: include_str!("../shaders/optim.wgsl"),
    entry_points: &["adam", "sgd"],
    read_only: &[true, false, false, false],
    workgroup_override: "WG",
};

/// The CSR sparse-times-dense product of `modula_sparse`.
pub const SPARSE: ShaderFile = ShaderFile {
    name: "sparse.wgsl",
    source: include_str!("../shaders/sparse.wgsl"),
    entry_points: &["csr_matmul"],
    read_only: &[true, true, true, false],
    workgroup_override: "WG",
};

/// Every shader file of the backend.
pub const ALL: [&ShaderFile; 8] = [
    &MATMUL,
    &ELEMENTWISE,
    &REDUCE,
    &SOFTMAX,
    &INDEXING,
    &CONV,
    &OPTIM,
    &SPARSE,
];

/// One compute entry point: the key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub file: &'static ShaderFile,
    pub entry: &'static str,
}

// Shader files are constants with distinct names; comparing names is comparing files.
impl PartialEq for ShaderFile {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ShaderFile {}

impl std::hash::Hash for ShaderFile {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Kernel {
    /// The kernel `entry` of `file` (the shader test checks that every listed entry exists).
    pub(crate) const fn new(file: &'static ShaderFile, entry: &'static str) -> Kernel {
        Kernel { file, entry }
    }
}
