// Sparse-times-dense products: C = S B + beta C + 1 bias^T with S in CSR form.
//
// The CSR parts arrive as one u32 list per dispatch: the row pointers at `ptr_off`, the
// column indices at `ind_off` and the values (as f32 bits) at `val_off`. One thread owns one
// element of C and walks its row's stored entries in order, so the sum is deterministic;
// threads of a workgroup take neighbouring columns, so their reads of a row of B coalesce.

struct Params {
    rows: u32,
    cols: u32,
    has_bias: u32,
    beta: f32,
    ptr_off: u32,
    ind_off: u32,
    val_off: u32,
    pad0: u32,
    pad1: vec4<u32>,
    pad2: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> csr: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn csr_matmul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p.rows * p.cols;
    for (var e = gid.x; e < n; e += nwg.x * WG) {
        let i = e / p.cols;
        let j = e % p.cols;
        var acc = 0.0;
        // With beta = 0 the old C is not read, so NaN in it does not leak.
        if (p.beta != 0.0) {
            acc = p.beta * c[e];
        }
        if (p.has_bias != 0u) {
            acc += bias[j];
        }
        let end = csr[p.ptr_off + i + 1u];
        for (var t = csr[p.ptr_off + i]; t < end; t++) {
            let v = bitcast<f32>(csr[p.val_off + t]);
            acc += v * b[csr[p.ind_off + t] * p.cols + j];
        }
        c[e] = acc;
    }
}
