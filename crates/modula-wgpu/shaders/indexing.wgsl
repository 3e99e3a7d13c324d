// Row and column indexing: gathers, segmented row sums (which also implement scatter-add
// without float atomics) and per-row column picks.
//
// Index lists arrive as one u32 array per dispatch; `idx_off`, `ptr_off`, `pos_off` and
// `target_off` locate the sub-arrays inside it.

struct Params {
    // Output rows (gathers, picks) or segments (segment_rows).
    rows: u32,
    cols: u32,
    // 1 adds into `out` instead of overwriting it.
    accumulate: u32,
    // segment_rows: 1 when segment t writes row idx[target_off + t] instead of row t.
    has_targets: u32,
    idx_off: u32,
    ptr_off: u32,
    pos_off: u32,
    target_off: u32,
    pad0: vec4<u32>,
    pad1: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

// out[i, j] (+)= src[idx[i], j]
@compute @workgroup_size(WG)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p.rows * p.cols;
    for (var e = gid.x; e < n; e += nwg.x * WG) {
        let i = e / p.cols;
        let j = e % p.cols;
        let v = src[idx[p.idx_off + i] * p.cols + j];
        if (p.accumulate != 0u) {
            out[e] = out[e] + v;
        } else {
            out[e] = v;
        }
    }
}

// For each segment t: out[r, j] (+)= sum over q in ptr[t]..ptr[t+1] of src[pos[q], j], where
// r = t or a target row. Every output element is owned by exactly one thread, which adds its
// segment's rows in list order: the result is deterministic and needs no atomics.
@compute @workgroup_size(WG)
fn segment_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p.rows * p.cols;
    for (var e = gid.x; e < n; e += nwg.x * WG) {
        let t = e / p.cols;
        let j = e % p.cols;
        var s = 0.0;
        let end = idx[p.ptr_off + t + 1u];
        for (var q = idx[p.ptr_off + t]; q < end; q++) {
            s += src[idx[p.pos_off + q] * p.cols + j];
        }
        var r = t;
        if (p.has_targets != 0u) {
            r = idx[p.target_off + t];
        }
        let at = r * p.cols + j;
        if (p.accumulate != 0u) {
            out[at] = out[at] + s;
        } else {
            out[at] = s;
        }
    }
}

// out[i, 0] = src[i, idx[i]]
@compute @workgroup_size(WG)
fn pick_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.rows; i += nwg.x * WG) {
        out[i] = src[i * p.cols + idx[p.idx_off + i]];
    }
}

// out[i, idx[i]] += src[i, 0]
@compute @workgroup_size(WG)
fn add_at_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.rows; i += nwg.x * WG) {
        let at = i * p.cols + idx[p.idx_off + i];
        out[at] = out[at] + src[i];
    }
}
