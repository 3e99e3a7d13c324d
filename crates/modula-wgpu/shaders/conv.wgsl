// Convolution windows over NHWC images stored as [n, H * W * C] rows: im2col, its adjoint
// col2im, and max pooling with its gradient.
//
// The adjoints are written as gathers (each input element sums the patch entries or pooled
// gradients that came from it) rather than scatters, so they need no atomics and every
// output element is written by exactly one thread.

struct Params {
    // Elements of the output of this entry point.
    total: u32,
    height: u32,
    width: u32,
    channels: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    padding: u32,
    out_h: u32,
    out_w: u32,
    pad0: u32,
    pad1: u32,
    // -inf, the identity of max.
    lowest: f32,
    pad2: f32,
    pad3: f32,
    pad4: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
// max_pool_backward: the output gradient.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

fn patch_len() -> u32 {
    return p.kernel_h * p.kernel_w * p.channels;
}

fn in_len() -> u32 {
    return p.height * p.width * p.channels;
}

// out[(n, oy, ox), (ky, kx, c)] = x[n, (oy*s + ky - pad, ox*s + kx - pad, c)], or 0 in padding.
@compute @workgroup_size(WG)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let patch_size = patch_len();
    let pixels = p.out_h * p.out_w;
    for (var e = gid.x; e < p.total; e += nwg.x * WG) {
        let row = e / patch_size;
        let col = e % patch_size;
        let img = row / pixels;
        let oy = (row % pixels) / p.out_w;
        let ox = row % p.out_w;
        let ky = col / (p.kernel_w * p.channels);
        let kx = (col / p.channels) % p.kernel_w;
        let ch = col % p.channels;
        let y = i32(oy * p.stride + ky) - i32(p.padding);
        let x = i32(ox * p.stride + kx) - i32(p.padding);
        var v = 0.0;
        if (y >= 0 && y < i32(p.height) && x >= 0 && x < i32(p.width)) {
            v = src[img * in_len() + (u32(y) * p.width + u32(x)) * p.channels + ch];
        }
        out[e] = v;
    }
}

// out[n, (y, x, c)] = sum of every patch entry that im2col copied from (y, x, c).
@compute @workgroup_size(WG)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let patch_size = patch_len();
    let image = in_len();
    for (var e = gid.x; e < p.total; e += nwg.x * WG) {
        let img = e / image;
        let pix = (e % image) / p.channels;
        let ch = e % p.channels;
        let y = pix / p.width;
        let x = pix % p.width;
        var s = 0.0;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            // Output row oy covers y with kernel row ky when oy * stride + ky = y + padding.
            let ty = i32(y + p.padding) - i32(ky);
            if (ty < 0 || u32(ty) % p.stride != 0u || u32(ty) / p.stride >= p.out_h) {
                continue;
            }
            let oy = u32(ty) / p.stride;
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let tx = i32(x + p.padding) - i32(kx);
                if (tx < 0 || u32(tx) % p.stride != 0u || u32(tx) / p.stride >= p.out_w) {
                    continue;
                }
                let ox = u32(tx) / p.stride;
                let row = (img * p.out_h + oy) * p.out_w + ox;
                s += src[row * patch_size + (ky * p.kernel_w + kx) * p.channels + ch];
            }
        }
        out[e] = s;
    }
}

// Input offset (within one image) of the first maximal element of window (oy, ox, ch).
fn window_argmax(base: u32, oy: u32, ox: u32, ch: u32) -> u32 {
    var best = p.lowest;
    var at = 0xffffffffu;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let pix = (oy * p.stride + ky) * p.width + ox * p.stride + kx;
            let v = src[base + pix * p.channels + ch];
            if (v > best || at == 0xffffffffu) {
                best = v;
                at = pix;
            }
        }
    }
    return at;
}

// out[n, (oy, ox, c)] = max over the window (no padding).
@compute @workgroup_size(WG)
fn max_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let per_image = p.out_h * p.out_w * p.channels;
    for (var e = gid.x; e < p.total; e += nwg.x * WG) {
        let img = e / per_image;
        let pix = (e % per_image) / p.channels;
        let ch = e % p.channels;
        let oy = pix / p.out_w;
        let ox = pix % p.out_w;
        let base = img * in_len();
        var best = p.lowest;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let q = (oy * p.stride + ky) * p.width + ox * p.stride + kx;
                best = max(best, src[base + q * p.channels + ch]);
            }
        }
        out[e] = best;
    }
}

// dx[n, (y, x, c)] = sum of dy over the windows whose first maximum is (y, x, c).
@compute @workgroup_size(WG)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let image = in_len();
    let per_image = p.out_h * p.out_w * p.channels;
    for (var e = gid.x; e < p.total; e += nwg.x * WG) {
        let img = e / image;
        let pix = (e % image) / p.channels;
        let ch = e % p.channels;
        let y = pix / p.width;
        let x = pix % p.width;
        let base = img * image;
        var s = 0.0;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            if (y < ky || (y - ky) % p.stride != 0u || (y - ky) / p.stride >= p.out_h) {
                continue;
            }
            let oy = (y - ky) / p.stride;
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                if (x < kx || (x - kx) % p.stride != 0u || (x - kx) / p.stride >= p.out_w) {
                    continue;
                }
                let ox = (x - kx) / p.stride;
                if (window_argmax(base, oy, ox, ch) == pix) {
                    s += dy[img * per_image + (oy * p.out_w + ox) * p.channels + ch];
                }
            }
        }
        out[e] = s;
    }
}
