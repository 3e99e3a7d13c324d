//! The kernels of [`Wgpu`]: each records one or two dispatches of a WGSL kernel into the
//! current batch. `modula_tensor::Backend` checks every call's contract on the host before it
//! reaches them.

use modula_tensor::{
    AdamStep, BackendError, BinaryOp, GroupedKernels, GroupedOp, Kernels, ReduceOp, SgdStep, Shape,
    Transpose, UnaryOp, Window2d,
};

use crate::Wgpu;
use crate::device::{Bind, Params};
use crate::shaders::{CONV, ELEMENTWISE, INDEXING, Kernel, MATMUL, OPTIM, REDUCE, SOFTMAX};
use crate::tensor::WgpuTensor;

/// Outputs per thread per side in the matmul kernel (`MICRO` in matmul.wgsl).
const MICRO: u32 = 8;
/// Workgroups of a grid-stride kernel: enough to fill a large GPU, few enough that each
/// thread still loops (which amortises its index arithmetic).
const MAX_STRIDE_GROUPS: usize = 4096;

fn unary_code(op: UnaryOp) -> usize {
    match op {
        UnaryOp::Relu => 0,
        UnaryOp::Tanh => 1,
        UnaryOp::Sigmoid => 2,
        UnaryOp::Exp => 3,
        UnaryOp::Log => 4,
        UnaryOp::Neg => 5,
        UnaryOp::Square => 6,
        UnaryOp::Sqrt => 7,
        UnaryOp::Abs => 8,
        UnaryOp::Softplus => 9,
    }
}

fn binary_code(op: BinaryOp) -> usize {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

fn reduce_code(op: ReduceOp) -> usize {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
    }
}

impl Wgpu {
    /// Workgroups for a grid-stride loop over `n` items.
    pub(crate) fn stride_groups(&self, n: usize) -> [u32; 3] {
        let wg = self.inner.options.workgroup_size as usize;
        let groups = n.div_ceil(wg).min(MAX_STRIDE_GROUPS);
        [groups as u32, 1, 1]
    }

    /// One workgroup per row, grid-stride beyond the dispatch limit.
    fn row_groups(&self, rows: usize) -> [u32; 3] {
        let max = self.inner.limits.max_compute_workgroups_per_dimension as usize;
        [rows.min(max) as u32, 1, 1]
    }

    /// Edge of the square output tile of one matmul workgroup.
    fn block(&self) -> usize {
        (self.inner.options.matmul_tile * MICRO) as usize
    }

    /// A grid of `cols` x `tiles` workgroups, with the tiles folded into y and z when they
    /// exceed the per-dimension limit; returns the grid and the fold (y extent).
    fn tile_grid(&self, cols: usize, tiles: usize) -> ([u32; 3], usize) {
        let max = self.inner.limits.max_compute_workgroups_per_dimension as usize;
        let fold = tiles.clamp(1, max);
        (
            [cols as u32, fold as u32, tiles.div_ceil(fold) as u32],
            fold,
        )
    }

    fn elementwise(&self, entry: &'static str, params: Params, binds: &[Bind<'_>], n: usize) {
        let groups = self.stride_groups(n);
        self.inner.recorder().dispatch(
            Kernel::new(&ELEMENTWISE, entry),
            params.u(0, n),
            binds,
            groups,
        );
    }
}

impl Kernels for Wgpu {
    type Tensor = WgpuTensor;

    fn name(&self) -> String {
        format!("wgpu: {}", self.inner.summary)
    }

    fn shape(&self, t: &WgpuTensor) -> Shape {
        t.shape
    }

    fn upload(&self, shape: Shape, data: &[f32]) -> WgpuTensor {
        self.inner.upload(shape, data)
    }

    fn download(&self, t: &WgpuTensor) -> Result<Vec<f32>, BackendError> {
        self.inner.download(t)
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        self.inner.synchronize()
    }

    fn zeros(&self, shape: Shape) -> WgpuTensor {
        self.inner.alloc(shape)
    }

    fn fill(&self, t: &mut WgpuTensor, value: f32) {
        self.elementwise(
            "fill",
            Params::default().f(13, value),
            &[
                Bind::Unused,
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(t),
                Bind::Unused,
            ],
            t.len(),
        );
    }

    fn duplicate(&self, t: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc(t.shape);
        let bytes = (t.len() * 4) as u64;
        if bytes > 0 && out.buffer.size() >= bytes && t.buffer.size() >= bytes {
            self.inner.recorder().encoder().copy_buffer_to_buffer(
                &t.buffer,
                0,
                &out.buffer,
                0,
                bytes,
            );
        }
        out
    }

    fn reshape(&self, t: WgpuTensor, shape: Shape) -> WgpuTensor {
        WgpuTensor {
            buffer: t.buffer,
            shape,
        }
    }

    fn matmul(
        &self,
        alpha: f32,
        a: &WgpuTensor,
        trans_a: Transpose,
        b: &WgpuTensor,
        trans_b: Transpose,
        beta: f32,
        c: &mut WgpuTensor,
    ) {
        let [m, k] = trans_a.apply(a.shape);
        let n = trans_b.apply(b.shape)[1];
        if m == 0 || n == 0 {
            return;
        }
        let bm = self.block();
        let (grid, fold) = self.tile_grid(n.div_ceil(bm), m.div_ceil(bm));
        let trans =
            usize::from(trans_a == Transpose::Yes) | usize::from(trans_b == Transpose::Yes) << 1;
        let params = Params::default()
            .u(0, m)
            .u(1, n)
            .u(2, k)
            .u(3, trans)
            .u(4, a.shape[1])
            .u(5, b.shape[1])
            .u(6, n)
            .f(12, alpha)
            .f(13, beta)
            .u(14, fold);
        self.inner.recorder().dispatch(
            Kernel::new(&MATMUL, "matmul"),
            params,
            &[
                Bind::Tensor(a),
                Bind::Tensor(b),
                Bind::Tensor(c),
                Bind::Unused,
            ],
            grid,
        );
    }

    fn unary(&self, op: UnaryOp, x: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc(x.shape);
        self.elementwise(
            "unary",
            Params::default().u(1, unary_code(op)),
            &[
                Bind::Tensor(x),
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(&out),
                Bind::Unused,
            ],
            x.len(),
        );
        out
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &WgpuTensor,
        y: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> WgpuTensor {
        let out = self.inner.alloc(x.shape);
        self.elementwise(
            "unary_backward",
            Params::default().u(1, unary_code(op)),
            &[
                Bind::Tensor(x),
                Bind::Tensor(y),
                Bind::Tensor(dy),
                Bind::Tensor(&out),
                Bind::Unused,
            ],
            x.len(),
        );
        out
    }

    fn binary(&self, op: BinaryOp, a: &WgpuTensor, b: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc(a.shape);
        self.elementwise(
            "binary",
            Params::default().u(1, binary_code(op)),
            &[
                Bind::Tensor(a),
                Bind::Tensor(b),
                Bind::Unused,
                Bind::Tensor(&out),
                Bind::Unused,
            ],
            a.len(),
        );
        out
    }

    fn binary_backward(
        &self,
        op: BinaryOp,
        a: &WgpuTensor,
        b: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> (WgpuTensor, WgpuTensor) {
        let da = self.inner.alloc(a.shape);
        let db = self.inner.alloc(a.shape);
        self.elementwise(
            "binary_backward",
            Params::default().u(1, binary_code(op)),
            &[
                Bind::Tensor(a),
                Bind::Tensor(b),
                Bind::Tensor(dy),
                Bind::Tensor(&da),
                Bind::Tensor(&db),
            ],
            a.len(),
        );
        (da, db)
    }

    fn add_row(&self, x: &mut WgpuTensor, row: &WgpuTensor) {
        self.elementwise(
            "add_row",
            Params::default().u(2, x.shape[1]),
            &[
                Bind::Tensor(row),
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(x),
                Bind::Unused,
            ],
            x.len(),
        );
    }

    fn scale_rows(&self, x: &mut WgpuTensor, s: &WgpuTensor) {
        self.elementwise(
            "scale_rows",
            Params::default().u(2, x.shape[1]),
            &[
                Bind::Tensor(s),
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(x),
                Bind::Unused,
            ],
            x.len(),
        );
    }

    fn row_dot(&self, a: &WgpuTensor, b: &WgpuTensor) -> WgpuTensor {
        self.reduce_rows_op(3, a, Some(b))
    }

    fn reduce_rows(&self, op: ReduceOp, x: &WgpuTensor) -> WgpuTensor {
        self.reduce_rows_op(reduce_code(op), x, None)
    }

    fn reduce_cols(&self, op: ReduceOp, x: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc([1, x.shape[1]]);
        let params = Params::default()
            .u(0, x.shape[0])
            .u(1, x.shape[1])
            .u(2, reduce_code(op))
            .f(4, f32::NEG_INFINITY);
        let groups = self.stride_groups(x.shape[1]);
        self.inner.recorder().dispatch(
            Kernel::new(&REDUCE, "reduce_cols"),
            params,
            &[Bind::Tensor(x), Bind::Unused, Bind::Tensor(&out)],
            groups,
        );
        out
    }

    fn log_softmax_rows(&self, x: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc(x.shape);
        self.softmax("log_softmax", x, None, &out);
        out
    }

    fn log_softmax_rows_backward(&self, y: &WgpuTensor, dy: &WgpuTensor) -> WgpuTensor {
        let out = self.inner.alloc(y.shape);
        self.softmax("log_softmax_backward", y, Some(dy), &out);
        out
    }

    fn gather_rows(&self, x: &WgpuTensor, idx: &[u32]) -> WgpuTensor {
        let out = self.inner.alloc([idx.len(), x.shape[1]]);
        self.gather(x, idx, &out, false);
        out
    }

    fn scatter_add_rows(&self, dst: &mut WgpuTensor, src: &WgpuTensor, idx: &[u32]) {
        if idx.is_empty() || dst.shape[1] == 0 {
            return;
        }
        // The inverse map as CSR, built by a stable counting sort: each destination row owns
        // the list of source rows that add into it, in their original order. One thread per
        // destination element then sums its list, so repeated indices need no atomics and the
        // result does not depend on scheduling.
        let rows = dst.shape[0];
        let mut count = vec![0u32; rows + 1];
        for &r in idx {
            count[r as usize + 1] += 1;
        }
        let targets: Vec<u32> = (0..rows as u32)
            .filter(|&r| count[r as usize + 1] > 0)
            .collect();
        for r in 0..rows {
            count[r + 1] += count[r];
        }
        let mut next = count.clone();
        let mut pos = vec![0u32; idx.len()];
        for (i, &r) in idx.iter().enumerate() {
            pos[next[r as usize] as usize] = i as u32;
            next[r as usize] += 1;
        }
        let mut ptr = Vec::with_capacity(targets.len() + 1);
        ptr.push(0);
        ptr.extend(targets.iter().map(|&r| count[r as usize + 1]));
        self.segments(src, &ptr, &pos, Some(&targets), dst);
    }

    fn pick_cols(&self, x: &WgpuTensor, cols: &[u32]) -> WgpuTensor {
        let out = self.inner.alloc([x.shape[0], 1]);
        self.per_row("pick_cols", x, cols, &out);
        out
    }

    fn add_at_cols(&self, dst: &mut WgpuTensor, cols: &[u32], values: &WgpuTensor) {
        let width = dst.shape[1];
        let mut rec = self.inner.recorder();
        let list = rec.indices(cols);
        let params = Params::default().u(0, dst.shape[0]).u(1, width);
        rec.dispatch(
            Kernel::new(&INDEXING, "add_at_cols"),
            params,
            &[
                Bind::Tensor(values),
                Bind::Indices(&list),
                Bind::Tensor(dst),
            ],
            self.stride_groups(dst.shape[0]),
        );
    }

    fn copy_cols(
        &self,
        src: &WgpuTensor,
        src_col: usize,
        dst: &mut WgpuTensor,
        dst_col: usize,
        width: usize,
        accumulate: bool,
    ) {
        let params = Params::default()
            .u(2, width)
            .u(3, usize::from(accumulate))
            .u(4, src.shape[1])
            .u(5, src_col)
            .u(6, dst.shape[1])
            .u(7, dst_col);
        self.elementwise(
            "copy_cols",
            params,
            &[
                Bind::Tensor(src),
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(dst),
                Bind::Unused,
            ],
            src.shape[0] * width,
        );
    }

    fn axpy(&self, alpha: f32, x: &WgpuTensor, y: &mut WgpuTensor) {
        self.elementwise(
            "axpy",
            Params::default().f(12, alpha),
            &[
                Bind::Tensor(x),
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(y),
                Bind::Unused,
            ],
            x.len(),
        );
    }

    fn scale(&self, x: &mut WgpuTensor, alpha: f32) {
        self.elementwise(
            "scale",
            Params::default().f(12, alpha),
            &[
                Bind::Unused,
                Bind::Unused,
                Bind::Unused,
                Bind::Tensor(x),
                Bind::Unused,
            ],
            x.len(),
        );
    }

    fn im2col(&self, x: &WgpuTensor, window: &Window2d) -> WgpuTensor {
        let rows = x.shape[0] * window.out_height() * window.out_width();
        let out = self.inner.alloc([rows, window.patch_len()]);
        self.window("im2col", window, x, None, &out);
        out
    }

    fn col2im(&self, cols: &WgpuTensor, window: &Window2d) -> WgpuTensor {
        let pixels = window.out_height() * window.out_width();
        let out = self.inner.alloc([cols.shape[0] / pixels, window.in_len()]);
        self.window("col2im", window, cols, None, &out);
        out
    }

    fn max_pool2d(&self, x: &WgpuTensor, window: &Window2d) -> WgpuTensor {
        let per_image = window.out_height() * window.out_width() * window.channels;
        let out = self.inner.alloc([x.shape[0], per_image]);
        self.window("max_pool", window, x, None, &out);
        out
    }

    fn max_pool2d_backward(
        &self,
        x: &WgpuTensor,
        dy: &WgpuTensor,
        window: &Window2d,
    ) -> WgpuTensor {
        let out = self.inner.alloc(x.shape);
        self.window("max_pool_backward", window, x, Some(dy), &out);
        out
    }

    fn adam_step(
        &self,
        param: &mut WgpuTensor,
        grad: &WgpuTensor,
        m: &mut WgpuTensor,
        v: &mut WgpuTensor,
        step: &AdamStep,
    ) {
        // The bias corrections exactly as AdamStep::update computes them, in f32.
        let t = step.t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - step.beta1.powi(t);
        let bc2 = 1.0 - step.beta2.powi(t);
        let params = Params::default()
            .u(0, param.len())
            .f(4, step.lr)
            .f(5, step.beta1)
            .f(6, step.beta2)
            .f(7, step.eps)
            .f(8, step.weight_decay)
            .f(9, bc1)
            .f(10, bc2);
        let groups = self.stride_groups(param.len());
        self.inner.recorder().dispatch(
            Kernel::new(&OPTIM, "adam"),
            params,
            &[
                Bind::Tensor(grad),
                Bind::Tensor(param),
                Bind::Tensor(m),
                Bind::Tensor(v),
            ],
            groups,
        );
    }

    fn sgd_step(
        &self,
        param: &mut WgpuTensor,
        grad: &WgpuTensor,
        velocity: &mut WgpuTensor,
        step: &SgdStep,
    ) {
        let params = Params::default()
            .u(0, param.len())
            .f(4, step.lr)
            .f(8, step.weight_decay)
            .f(11, step.momentum);
        let groups = self.stride_groups(param.len());
        self.inner.recorder().dispatch(
            Kernel::new(&OPTIM, "sgd"),
            params,
            &[
                Bind::Tensor(grad),
                Bind::Tensor(param),
                Bind::Tensor(velocity),
                Bind::Unused,
            ],
            groups,
        );
    }
}

/// The grouped product and the segmented sums run as kernels of their own; the products
/// through an index keep the default bodies (a gather, then the grouped product).
impl GroupedKernels for Wgpu {
    fn grouped_matmul(
        &self,
        op: GroupedOp,
        a: &WgpuTensor,
        b: &WgpuTensor,
        offsets: &[u32],
        beta: f32,
        c: &mut WgpuTensor,
    ) {
        let groups = offsets.len() - 1;
        let (d_in, d_out) = op.block_dims(b.shape, c.shape, groups);
        let bm = self.block();
        // Row offsets, then the prefix sums of each group's row tiles (XW, XWt), which let a
        // workgroup find its group by binary search.
        let mut meta = offsets.to_vec();
        meta.push(0);
        let mut tiles = 0usize;
        for w in offsets.windows(2) {
            tiles += ((w[1] - w[0]) as usize).div_ceil(bm);
            meta.push(tiles as u32);
        }
        let (mode, width, tiles, tiles_m) = match op {
            GroupedOp::XW => (0, d_out, tiles, 0),
            GroupedOp::XWt => (1, d_in, tiles, 0),
            GroupedOp::XtY => {
                let tiles_m = d_in.div_ceil(bm);
                (2, d_out, groups * tiles_m, tiles_m)
            }
        };
        if width == 0 || tiles == 0 {
            return;
        }
        let (grid, fold) = self.tile_grid(width.div_ceil(bm), tiles);
        let params = Params::default()
            .u(7, mode)
            .u(8, groups)
            .u(9, d_in)
            .u(10, d_out)
            .u(11, tiles_m)
            .f(13, beta)
            .u(14, fold);
        let mut rec = self.inner.recorder();
        let list = rec.indices(&meta);
        rec.dispatch(
            Kernel::new(&MATMUL, "grouped"),
            params,
            &[
                Bind::Tensor(a),
                Bind::Tensor(b),
                Bind::Tensor(c),
                Bind::Indices(&list),
            ],
            grid,
        );
    }

    fn segment_sum_rows(&self, src: &WgpuTensor, pos: &[u32], ptr: &[u32]) -> WgpuTensor {
        let n = ptr.len() - 1;
        let mut out = self.inner.alloc([n, src.shape[1]]);
        self.segments(src, ptr, pos, None, &mut out);
        out
    }

    fn add_gathered_rows(&self, dst: &mut WgpuTensor, table: &WgpuTensor, idx: &[u32]) {
        self.gather(table, idx, dst, true);
    }
}

impl Wgpu {
    fn reduce_rows_op(&self, op: usize, x: &WgpuTensor, y: Option<&WgpuTensor>) -> WgpuTensor {
        let out = self.inner.alloc([x.shape[0], 1]);
        let params = Params::default()
            .u(0, x.shape[0])
            .u(1, x.shape[1])
            .u(2, op)
            .f(4, f32::NEG_INFINITY);
        let y = y.map_or(Bind::Unused, Bind::Tensor);
        let groups = self.row_groups(x.shape[0]);
        self.inner.recorder().dispatch(
            Kernel::new(&REDUCE, "reduce_rows"),
            params,
            &[Bind::Tensor(x), y, Bind::Tensor(&out)],
            groups,
        );
        out
    }

    fn softmax(
        &self,
        entry: &'static str,
        x: &WgpuTensor,
        dy: Option<&WgpuTensor>,
        out: &WgpuTensor,
    ) {
        let params = Params::default()
            .u(0, x.shape[0])
            .u(1, x.shape[1])
            .f(4, f32::NEG_INFINITY);
        let dy = dy.map_or(Bind::Unused, Bind::Tensor);
        let groups = self.row_groups(x.shape[0]);
        self.inner.recorder().dispatch(
            Kernel::new(&SOFTMAX, entry),
            params,
            &[Bind::Tensor(x), dy, Bind::Tensor(out)],
            groups,
        );
    }

    /// `out[i, :] (+)= x[idx[i], :]`.
    fn gather(&self, x: &WgpuTensor, idx: &[u32], out: &WgpuTensor, accumulate: bool) {
        let cols = x.shape[1];
        if idx.is_empty() || cols == 0 {
            return;
        }
        let mut rec = self.inner.recorder();
        let list = rec.indices(idx);
        let params = Params::default()
            .u(0, idx.len())
            .u(1, cols)
            .u(2, usize::from(accumulate));
        rec.dispatch(
            Kernel::new(&INDEXING, "gather_rows"),
            params,
            &[Bind::Tensor(x), Bind::Indices(&list), Bind::Tensor(out)],
            self.stride_groups(idx.len() * cols),
        );
    }

    /// Segmented row sums: segment `t` sums `src[pos[ptr[t]..ptr[t+1]], :]` into row `t` of
    /// `out` (overwriting), or into row `targets[t]` (accumulating) when targets are given.
    fn segments(
        &self,
        src: &WgpuTensor,
        ptr: &[u32],
        pos: &[u32],
        targets: Option<&[u32]>,
        out: &mut WgpuTensor,
    ) {
        let segments = ptr.len() - 1;
        let cols = src.shape[1];
        if segments == 0 || cols == 0 {
            return;
        }
        let mut meta = Vec::with_capacity(ptr.len() + pos.len() + segments);
        meta.extend_from_slice(ptr);
        meta.extend_from_slice(pos);
        meta.extend_from_slice(targets.unwrap_or(&[]));
        let mut rec = self.inner.recorder();
        let list = rec.indices(&meta);
        let params = Params::default()
            .u(0, segments)
            .u(1, cols)
            .u(2, usize::from(targets.is_some()))
            .u(3, usize::from(targets.is_some()))
            .u(5, 0)
            .u(6, ptr.len())
            .u(7, ptr.len() + pos.len());
        rec.dispatch(
            Kernel::new(&INDEXING, "segment_rows"),
            params,
            &[Bind::Tensor(src), Bind::Indices(&list), Bind::Tensor(out)],
            self.stride_groups(segments * cols),
        );
    }

    /// pick_cols: one thread per row.
    fn per_row(&self, entry: &'static str, x: &WgpuTensor, cols: &[u32], out: &WgpuTensor) {
        if cols.is_empty() {
            return;
        }
        let mut rec = self.inner.recorder();
        let list = rec.indices(cols);
        let params = Params::default().u(0, x.shape[0]).u(1, x.shape[1]);
        rec.dispatch(
            Kernel::new(&INDEXING, entry),
            params,
            &[Bind::Tensor(x), Bind::Indices(&list), Bind::Tensor(out)],
            self.stride_groups(x.shape[0]),
        );
    }

    /// The conv.wgsl kernels; each thread writes one element of `out`.
    fn window(
        &self,
        entry: &'static str,
        w: &Window2d,
        src: &WgpuTensor,
        dy: Option<&WgpuTensor>,
        out: &WgpuTensor,
    ) {
        let params = Params::default()
            .u(0, out.len())
            .u(1, w.height)
            .u(2, w.width)
            .u(3, w.channels)
            .u(4, w.kernel_h)
            .u(5, w.kernel_w)
            .u(6, w.stride)
            .u(7, w.padding)
            .u(8, w.out_height())
            .u(9, w.out_width())
            .f(12, f32::NEG_INFINITY);
        let dy = dy.map_or(Bind::Unused, Bind::Tensor);
        let groups = self.stride_groups(out.len());
        self.inner.recorder().dispatch(
            Kernel::new(&CONV, entry),
            params,
            &[Bind::Tensor(src), dy, Bind::Tensor(out)],
            groups,
        );
    }
}
