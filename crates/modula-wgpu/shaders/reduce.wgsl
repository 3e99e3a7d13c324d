// Reductions: per row (sum, mean, max and row-wise dot products) and per column.
//
// A row is reduced by one workgroup: each thread folds a strided slice of the row, then the
// partial results are combined by a tree in workgroup memory. The tree's shape depends only on
// WG, so results are deterministic for a given workgroup size. WG must be a power of two.

struct Params {
    rows: u32,
    cols: u32,
    // 0 = sum, 1 = mean, 2 = max, 3 = dot product of x and y.
    op: u32,
    pad0: u32,
    // -inf, the identity of max (passed in because WGSL has no infinity literal).
    lowest: f32,
    pad1: f32,
    pad2: f32,
    pad3: f32,
    pad4: vec4<u32>,
    pad5: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

fn combine(op: u32, u: f32, v: f32) -> f32 {
    if (op == 2u) {
        return max(u, v);
    }
    return u + v;
}

fn identity(op: u32) -> f32 {
    return select(0.0, p.lowest, op == 2u);
}

// out[row, 0] = reduction of row `row`; one workgroup per row (grid-stride over rows).
@compute @workgroup_size(WG)
fn reduce_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let op = p.op;
    for (var row = wg.x; row < p.rows; row += nwg.x) {
        let base = row * p.cols;
        var acc = identity(op);
        for (var j = lid.x; j < p.cols; j += WG) {
            var v = x[base + j];
            if (op == 3u) {
                v *= y[base + j];
            }
            acc = combine(op, acc, v);
        }
        partial[lid.x] = acc;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                partial[lid.x] = combine(op, partial[lid.x], partial[lid.x + s]);
            }
            workgroupBarrier();
        }
        if (lid.x == 0u) {
            var r = partial[0];
            if (op == 1u) {
                r /= f32(p.cols);
            }
            out[row] = r;
        }
        // The next row reuses `partial`.
        workgroupBarrier();
    }
}

// out[0, j] = reduction of column j; one thread per column, rows summed in order.
@compute @workgroup_size(WG)
fn reduce_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let op = p.op;
    for (var j = gid.x; j < p.cols; j += nwg.x * WG) {
        var acc = identity(op);
        for (var i = 0u; i < p.rows; i++) {
            acc = combine(op, acc, x[i * p.cols + j]);
        }
        if (op == 1u) {
            acc /= f32(p.rows);
        }
        out[j] = acc;
    }
}
