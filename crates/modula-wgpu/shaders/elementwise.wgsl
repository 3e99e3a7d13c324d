// Elementwise kernels and their gradients, plus the row/column broadcasts and strided column
// copies that are elementwise over a 2-D index.
//
// Every entry point walks its index space with a grid-stride loop, so the host can cap the
// number of workgroups (the dispatch limit is 65535 per dimension) without changing results.

struct Params {
    // Elements to process.
    n: u32,
    // UnaryOp or BinaryOp code (see `unary_fn` and `binary_fn`).
    op: u32,
    // Columns of the destination (broadcasts) or of the copied block (copy_cols).
    cols: u32,
    // copy_cols: 1 adds into the destination instead of overwriting it.
    accumulate: u32,
    src_stride: u32,
    src_col: u32,
    dst_stride: u32,
    dst_col: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    alpha: f32,
    value: f32,
    pad4: f32,
    pad5: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;

override WG: u32 = 256u;

fn sigmoid(v: f32) -> f32 {
    // Two branches so that exp never overflows.
    if (v >= 0.0) {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

fn stable_tanh(v: f32) -> f32 {
    // Drivers may build tanh from exp(v) / exp(-v), which is inf / inf for large |v|.
    let e = exp(-2.0 * abs(v));
    let t = (1.0 - e) / (1.0 + e);
    return select(-t, t, v >= 0.0);
}

fn unary_fn(op: u32, v: f32) -> f32 {
    switch op {
        case 0u: { return max(v, 0.0); }
        case 1u: { return stable_tanh(v); }
        case 2u: { return sigmoid(v); }
        case 3u: { return exp(v); }
        case 4u: { return log(v); }
        case 5u: { return -v; }
        case 6u: { return v * v; }
        case 7u: { return sqrt(v); }
        case 8u: { return abs(v); }
        // Softplus as max(v, 0) + ln(1 + exp(-|v|)), which cannot overflow.
        default: { return max(v, 0.0) + log(1.0 + exp(-abs(v))); }
    }
}

// dy/dx at input v with output w = f(v); tanh, sigmoid, exp and sqrt use the output.
fn unary_grad(op: u32, v: f32, w: f32) -> f32 {
    switch op {
        case 0u: { return select(0.0, 1.0, v > 0.0); }
        case 1u: { return 1.0 - w * w; }
        case 2u: { return w * (1.0 - w); }
        case 3u: { return w; }
        case 4u: { return 1.0 / v; }
        case 5u: { return -1.0; }
        case 6u: { return 2.0 * v; }
        case 7u: { return 0.5 / w; }
        case 8u: { return sign(v); }
        default: { return sigmoid(v); }
    }
}

fn binary_fn(op: u32, u: f32, v: f32) -> f32 {
    switch op {
        case 0u: { return u + v; }
        case 1u: { return u - v; }
        case 2u: { return u * v; }
        default: { return u / v; }
    }
}

// (d/du, d/dv) of binary_fn.
fn binary_grad(op: u32, u: f32, v: f32) -> vec2<f32> {
    switch op {
        case 0u: { return vec2<f32>(1.0, 1.0); }
        case 1u: { return vec2<f32>(1.0, -1.0); }
        case 2u: { return vec2<f32>(v, u); }
        default: { return vec2<f32>(1.0 / v, -u / (v * v)); }
    }
}

// out = f(x)
@compute @workgroup_size(WG)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = unary_fn(p.op, x[i]);
    }
}

// out = dy * f'(x) with x, y = f(x), dy in x, y, z.
@compute @workgroup_size(WG)
fn unary_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = z[i] * unary_grad(p.op, x[i], y[i]);
    }
}

// out = op(x, y)
@compute @workgroup_size(WG)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = binary_fn(p.op, x[i], y[i]);
    }
}

// (out, out2) = dy * (d/da, d/db) with a, b, dy in x, y, z.
@compute @workgroup_size(WG)
fn binary_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let d = binary_grad(p.op, x[i], y[i]);
        out[i] = z[i] * d.x;
        out2[i] = z[i] * d.y;
    }
}

// out = value
@compute @workgroup_size(WG)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = p.value;
    }
}

// out *= alpha
@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = out[i] * p.alpha;
    }
}

// out += alpha * x
@compute @workgroup_size(WG)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = out[i] + p.alpha * x[i];
    }
}

// out[i, j] += x[0, j]
@compute @workgroup_size(WG)
fn add_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = out[i] + x[i % p.cols];
    }
}

// out[i, j] *= x[i, 0]
@compute @workgroup_size(WG)
fn scale_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        out[i] = out[i] * x[i / p.cols];
    }
}

// out[r, dst_col + j] (+)= x[r, src_col + j] for j < cols.
@compute @workgroup_size(WG)
fn copy_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let r = i / p.cols;
        let j = i % p.cols;
        let v = x[r * p.src_stride + p.src_col + j];
        let at = r * p.dst_stride + p.dst_col + j;
        if (p.accumulate != 0u) {
            out[at] = out[at] + v;
        } else {
            out[at] = v;
        }
    }
}
