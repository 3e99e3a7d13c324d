// Row-wise log-softmax and its gradient, one workgroup per row (grid-stride over rows).
//
// The forward pass is max-shifted: lse = max + ln(sum exp(x - max)), so no exponential can
// overflow. Both passes reduce with a power-of-two tree in workgroup memory.

struct Params {
    rows: u32,
    cols: u32,
    pad0: u32,
    pad1: u32,
    // -inf, the identity of max.
    lowest: f32,
    pad2: f32,
    pad3: f32,
    pad4: f32,
    pad5: vec4<u32>,
    pad6: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
// Forward: the logits. Backward: the forward output y.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// Backward: the output gradient dy.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

// Tree reduction of `partial` (sum, or max when `use_max`); every thread gets the result.
fn tree(lid: u32, use_max: bool) -> f32 {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let u = partial[lid];
            let v = partial[lid + s];
            partial[lid] = select(u + v, max(u, v), use_max);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    // Nobody may overwrite `partial` before everyone has read the result.
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn log_softmax(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    for (var row = wg.x; row < p.rows; row += nwg.x) {
        let base = row * p.cols;
        var m = p.lowest;
        for (var j = lid.x; j < p.cols; j += WG) {
            m = max(m, x[base + j]);
        }
        partial[lid.x] = m;
        let row_max = tree(lid.x, true);
        var s = 0.0;
        for (var j = lid.x; j < p.cols; j += WG) {
            s += exp(x[base + j] - row_max);
        }
        partial[lid.x] = s;
        let lse = row_max + log(tree(lid.x, false));
        for (var j = lid.x; j < p.cols; j += WG) {
            out[base + j] = x[base + j] - lse;
        }
    }
}

// dx = dy - exp(y) * sum_j dy[row, j]
@compute @workgroup_size(WG)
fn log_softmax_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    for (var row = wg.x; row < p.rows; row += nwg.x) {
        let base = row * p.cols;
        var s = 0.0;
        for (var j = lid.x; j < p.cols; j += WG) {
            s += dy[base + j];
        }
        partial[lid.x] = s;
        let total = tree(lid.x, false);
        for (var j = lid.x; j < p.cols; j += WG) {
            out[base + j] = dy[base + j] - exp(x[base + j]) * total;
        }
    }
}
