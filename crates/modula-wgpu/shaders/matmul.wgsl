// Tiled matrix products: the dense GEMM `C = alpha * op(A) * op(B) + beta * C` and the
// grouped GEMM of routed layers, which covers every module in one dispatch.
//
// Each workgroup of TILE x TILE threads computes one BM x BM tile of C (BM = TILE * MICRO),
// every thread a MICRO x MICRO block of it. The K dimension is walked in steps of BK: both
// operand slices are staged in workgroup memory once and then read TILE times each, which is
// what makes the kernel compute-bound instead of bandwidth-bound. Transposes only change how
// the staging loads index global memory (chosen so that neighbouring threads read
// neighbouring addresses), so all four transpose combinations share one inner loop.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Bit 0: op(A) = A^T; bit 1: op(B) = B^T (dense GEMM only).
    trans: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    // Grouped GEMM: 0 = XW, 1 = XWt, 2 = XtY.
    mode: u32,
    groups: u32,
    d_in: u32,
    d_out: u32,
    // XtY: row tiles per group block (ceil(d_in / BM)).
    tiles_m: u32,
    alpha: f32,
    beta: f32,
    // Workgroups per row of the dispatch grid's y dimension, when tiles are folded into z.
    fold: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// Grouped GEMM: the G + 1 row offsets, then the G + 1 prefix sums of each group's row tiles.
@group(0) @binding(4) var<storage, read> offs: array<u32>;

// Threads per side of a workgroup. The tile arrays below are sized from it, so a driver
// override changes the tile consistently.
override TILE: u32 = 16u;
// Outputs per thread per side. Each thread owns two 4-row groups and two 4-column groups of
// its tile, half a tile apart, so that it reads its operands from workgroup memory as four
// vec4s per K step and does 64 multiply-adds with them (the earlier 4 x 4 scalar version did
// 16 per 8 scalar reads; on an H200 the change took an 8192-square product from 2.9 to 14.0
// TFLOP/s, see docs/wgpu.md). The accumulators are 16 named vec4s, so this is fixed.
const MICRO: u32 = 8u;
// Depth of one staged K slice. 16 measured the same on the H200 and needs more than the
// 16 KiB of workgroup memory WebGPU guarantees.
const BK: u32 = 8u;

// Staged slices of op(A) and op(B), stored K-major (`[q][i]`) as vec4s of four neighbouring
// rows (columns). A slice row is `TILE * MICRO / 4 + 1` vec4s: the vec4 of padding beyond the
// tile's width spreads the staging writes of neighbouring K indices over all the banks. For
// TILE = 16 the two are about 8 KiB, half the workgroup memory WebGPU guarantees.
var<workgroup> a_tile: array<vec4<f32>, BK * (TILE * MICRO / 4u + 1u)>;
var<workgroup> b_tile: array<vec4<f32>, BK * (TILE * MICRO / 4u + 1u)>;

// One tile's product: geometry of op(A) (m x k), op(B) (k x n) and C, as offsets and leading
// dimensions into the bound buffers.
struct Gemm {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    lda: u32,
    ta: bool,
    b_off: u32,
    ldb: u32,
    tb: bool,
    c_off: u32,
    ldc: u32,
    row0: u32,
    col0: u32,
}

// op(A)[i, q], zero outside the matrix so that edge tiles need no special inner loop.
fn load_a(g: Gemm, i: u32, q: u32) -> f32 {
    if (i >= g.m || q >= g.k) {
        return 0.0;
    }
    if (g.ta) {
        return a[g.a_off + q * g.lda + i];
    }
    return a[g.a_off + i * g.lda + q];
}

// op(B)[q, j], zero outside the matrix.
fn load_b(g: Gemm, q: u32, j: u32) -> f32 {
    if (q >= g.k || j >= g.n) {
        return 0.0;
    }
    if (g.tb) {
        return b[g.b_off + j * g.ldb + q];
    }
    return b[g.b_off + q * g.ldb + j];
}

// Computes one BM x BM tile of C. Must be called in workgroup-uniform control flow.
fn gemm_tile(g: Gemm, lid: vec3<u32>, alpha: f32, beta: f32) {
    let bm = TILE * MICRO;
    let half = bm / 2u;
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * TILE + tx;
    let threads = TILE * TILE;
    let slice = bm / 4u + 1u;
    // c{r}{h}: row `(r / 4) * half + 4 ty + r % 4` of the tile, columns `h * half + 4 tx`
    // to `+ 3`. Named variables, not an array: a dynamically indexed array of accumulators can
    // end up in local memory instead of registers.
    var c00 = vec4<f32>();
    var c01 = vec4<f32>();
    var c10 = vec4<f32>();
    var c11 = vec4<f32>();
    var c20 = vec4<f32>();
    var c21 = vec4<f32>();
    var c30 = vec4<f32>();
    var c31 = vec4<f32>();
    var c40 = vec4<f32>();
    var c41 = vec4<f32>();
    var c50 = vec4<f32>();
    var c51 = vec4<f32>();
    var c60 = vec4<f32>();
    var c61 = vec4<f32>();
    var c70 = vec4<f32>();
    var c71 = vec4<f32>();
    for (var k0 = 0u; k0 < g.k; k0 += BK) {
        for (var e = flat; e < BK * bm; e += threads) {
            // Walk along the stored rows of A: q for A, i for A^T.
            var i = e / BK;
            var q = e % BK;
            if (g.ta) {
                i = e % bm;
                q = e / bm;
            }
            a_tile[q * slice + i / 4u][i % 4u] = load_a(g, g.row0 + i, k0 + q);
        }
        for (var e = flat; e < BK * bm; e += threads) {
            var j = e % bm;
            var q = e / bm;
            if (g.tb) {
                j = e / BK;
                q = e % BK;
            }
            b_tile[q * slice + j / 4u][j % 4u] = load_b(g, k0 + q, g.col0 + j);
        }
        workgroupBarrier();
        for (var q = 0u; q < BK; q++) {
            let row = q * slice;
            let a0 = a_tile[row + ty];
            let a1 = a_tile[row + TILE + ty];
            let b0 = b_tile[row + tx];
            let b1 = b_tile[row + TILE + tx];
            c00 += a0.x * b0;
            c01 += a0.x * b1;
            c10 += a0.y * b0;
            c11 += a0.y * b1;
            c20 += a0.z * b0;
            c21 += a0.z * b1;
            c30 += a0.w * b0;
            c31 += a0.w * b1;
            c40 += a1.x * b0;
            c41 += a1.x * b1;
            c50 += a1.y * b0;
            c51 += a1.y * b1;
            c60 += a1.z * b0;
            c61 += a1.z * b1;
            c70 += a1.w * b0;
            c71 += a1.w * b1;
        }
        workgroupBarrier();
    }
    store_row4(g, 0u * half + 4u * ty + 0u, 4u * tx, c00, c01, half, alpha, beta);
    store_row4(g, 0u * half + 4u * ty + 1u, 4u * tx, c10, c11, half, alpha, beta);
    store_row4(g, 0u * half + 4u * ty + 2u, 4u * tx, c20, c21, half, alpha, beta);
    store_row4(g, 0u * half + 4u * ty + 3u, 4u * tx, c30, c31, half, alpha, beta);
    store_row4(g, 1u * half + 4u * ty + 0u, 4u * tx, c40, c41, half, alpha, beta);
    store_row4(g, 1u * half + 4u * ty + 1u, 4u * tx, c50, c51, half, alpha, beta);
    store_row4(g, 1u * half + 4u * ty + 2u, 4u * tx, c60, c61, half, alpha, beta);
    store_row4(g, 1u * half + 4u * ty + 3u, 4u * tx, c70, c71, half, alpha, beta);
}

// Writes one tile row's two 4-column groups (`col`, `col + half`, relative to the tile) of
// `alpha * op(A) op(B) + beta * C`, skipping what lies outside C.
fn store_row4(g: Gemm, row: u32, col: u32, v0: vec4<f32>, v1: vec4<f32>, half: u32, alpha: f32, beta: f32) {
    let i = g.row0 + row;
    if (i >= g.m) {
        return;
    }
    for (var s = 0u; s < 8u; s++) {
        let j = g.col0 + col + (s / 4u) * half + s % 4u;
        if (j >= g.n) {
            continue;
        }
        let at = g.c_off + i * g.ldc + j;
        var v = alpha * select(v0[s % 4u], v1[s % 4u], s >= 4u);
        // beta == 0 ignores C entirely, so that NaN in an uninitialised C cannot leak.
        if (beta != 0.0) {
            v += beta * c[at];
        }
        c[at] = v;
    }
}

// The linear tile index of a workgroup whose grid was folded into y and z.
fn tile_index(wg: vec3<u32>) -> u32 {
    return wg.y + wg.z * p.fold;
}

@compute @workgroup_size(TILE, TILE)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bm = TILE * MICRO;
    var g: Gemm;
    g.m = p.m;
    g.n = p.n;
    g.k = p.k;
    g.a_off = 0u;
    g.lda = p.lda;
    g.ta = (p.trans & 1u) != 0u;
    g.b_off = 0u;
    g.ldb = p.ldb;
    g.tb = (p.trans & 2u) != 0u;
    g.c_off = 0u;
    g.ldc = p.ldc;
    g.row0 = tile_index(wg) * bm;
    g.col0 = wg.x * bm;
    if (g.row0 >= g.m) {
        return;
    }
    gemm_tile(g, lid, p.alpha, p.beta);
}

// The grouped GEMM of a routed layer. Row-segmented operands hold group `grp`'s rows at
// offs[grp]..offs[grp + 1]; the stacked operand holds one [d_in, d_out] block per group.
// XW and XWt tile each group's rows separately (a tile never spans two groups): the workgroup
// finds its group by binary search over the tile prefix sums. XtY has a fixed number of tiles
// per group (its output blocks all have the same shape), so the group is a division.
@compute @workgroup_size(TILE, TILE)
fn grouped(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bm = TILE * MICRO;
    let t = tile_index(wg);
    let block = p.d_in * p.d_out;
    var g: Gemm;
    g.col0 = wg.x * bm;
    if (p.mode == 2u) {
        let grp = t / p.tiles_m;
        if (grp >= p.groups) {
            return;
        }
        let start = offs[grp];
        g.m = p.d_in;
        g.n = p.d_out;
        g.k = offs[grp + 1u] - start;
        g.a_off = start * p.d_in;
        g.lda = p.d_in;
        g.ta = true;
        g.b_off = start * p.d_out;
        g.ldb = p.d_out;
        g.tb = false;
        g.c_off = grp * block;
        g.ldc = p.d_out;
        g.row0 = (t % p.tiles_m) * bm;
    } else {
        let prefix = p.groups + 1u;
        if (t >= offs[prefix + p.groups]) {
            return;
        }
        // Invariant: prefix[lo] <= t < prefix[hi]; empty groups have equal neighbours and
        // are never selected.
        var lo = 0u;
        var hi = p.groups;
        while (hi - lo > 1u) {
            let mid = (lo + hi) / 2u;
            if (offs[prefix + mid] <= t) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let grp = lo;
        let start = offs[grp];
        g.m = offs[grp + 1u] - start;
        g.row0 = (t - offs[prefix + grp]) * bm;
        g.a_off = start * select(p.d_in, p.d_out, p.mode == 1u);
        g.lda = select(p.d_in, p.d_out, p.mode == 1u);
        g.ta = false;
        g.b_off = grp * block;
        g.ldb = p.d_out;
        if (p.mode == 0u) {
            g.n = p.d_out;
            g.k = p.d_in;
            g.tb = false;
            g.c_off = start * p.d_out;
            g.ldc = p.d_out;
        } else {
            g.n = p.d_in;
            g.k = p.d_out;
            g.tb = true;
            g.c_off = start * p.d_in;
            g.ldc = p.d_in;
        }
    }
    gemm_tile(g, lid, 1.0, p.beta);
}
