// Optimiser updates, one thread per parameter element, matching AdamStep::update and
// SgdStep::update of modula-tensor operation for operation.

struct Params {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // Adam's bias corrections 1 - beta^t, computed on the host exactly as the CPU does.
    bc1: f32,
    bc2: f32,
    momentum: f32,
    pad3: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
// Adam: first moment. SGD: velocity.
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
// Adam: second moment. SGD: unused.
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let g = grad[i];
        let w = param[i];
        let m1 = p.beta1 * m[i] + (1.0 - p.beta1) * g;
        let v1 = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
        let step = p.lr * (m1 / p.bc1) / (sqrt(v1 / p.bc2) + p.eps);
        param[i] = w - step - p.lr * p.weight_decay * w;
        m[i] = m1;
        v[i] = v1;
    }
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += nwg.x * WG) {
        let w = param[i];
        let g = grad[i] + p.weight_decay * w;
        let vel = p.momentum * m[i] + g;
        param[i] = w - p.lr * vel;
        m[i] = vel;
    }
}
