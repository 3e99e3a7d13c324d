//! 2-D convolution (via im2col) and max pooling over NHWC image rows.

use modula_tensor::{Backend, ReduceOp, Transpose, Window2d};
use rand::Rng;

use crate::init::Init;
use crate::module::{Ctx, Module};
use crate::param::{Grads, ParamId, ParamStore};

/// Panics unless `x` is a batch of images of the window's input size.
#[track_caller]
fn check_images<B: Backend>(b: &B, x: &B::Tensor, window: &Window2d, layer: &str) {
    let cols = b.shape(x)[1];
    assert_eq!(
        cols,
        window.in_len(),
        "{layer}: input rows must hold {}x{}x{} NHWC images ({} values), got {cols}",
        window.height,
        window.width,
        window.channels,
        window.in_len()
    );
}

/// 2-D convolution over NHWC image rows `[batch, H * W * C_in]`, producing NHWC rows
/// `[batch, OH * OW * C_out]`.
///
/// Implemented as one matrix product: the patches `im2col(x) [batch * OH * OW, kh * kw * C_in]`
/// times the weight `[kh * kw * C_in, C_out]`, plus the bias row. Because both the patches and
/// the output are pixel-major, the product is already the NHWC output and needs only a
/// (free) reshape. The input size is part of the layer (in [`Conv2d::window`]) because the
/// flattened rows do not carry it.
///
/// ```
/// use modula_nn::{Conv2d, Ctx, Module, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::{Backend, Window2d};
/// use rand::SeedableRng;
/// let cpu = Cpu::with_threads(1);
/// let mut params = ParamStore::new();
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let window = Window2d { height: 8, width: 8, channels: 3, kernel_h: 3, kernel_w: 3, stride: 2, padding: 1 };
/// let conv = Conv2d::new(&cpu, &mut params, "conv1", window, 16, &mut rng);
/// let x = cpu.upload([2, 8 * 8 * 3], &[0.1; 2 * 8 * 8 * 3]);
/// let (y, _cache) = conv.forward(&cpu, &params, &x, &mut Ctx::eval());
/// assert_eq!(conv.out_dims(), (4, 4, 16));
/// assert_eq!(cpu.shape(&y), [2, 4 * 4 * 16]);
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Weight `[kh * kw * C_in, C_out]`, rows ordered `(ky, kx, c_in)` like im2col patches.
    pub weight: ParamId,
    /// Bias `[1, C_out]`.
    pub bias: ParamId,
    /// Input size, kernel size, stride and padding.
    pub window: Window2d,
    /// Number of output channels.
    pub out_channels: usize,
}

impl Conv2d {
    /// Registers `{name}.weight` (He-normal, the default for convolutions followed by ReLU)
    /// and `{name}.bias` (zeros).
    ///
    /// # Panics
    /// If the kernel does not fit the padded input, the stride is zero, or one of the
    /// parameter names is already registered in `params`.
    #[track_caller]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        window: Window2d,
        out_channels: usize,
        rng: &mut impl Rng,
    ) -> Self {
        Self::with_init(backend, params, name, window, out_channels, Init::He, rng)
    }

    /// As [`Conv2d::new`] with another weight initialisation; the fans are
    /// `(kh * kw * C_in, kh * kw * C_out)`, the numbers of inputs and outputs each weight touches.
    ///
    /// # Panics
    /// As [`Conv2d::new`].
    #[track_caller]
    pub fn with_init<B: Backend>(
        backend: &B,
        params: &mut ParamStore<B>,
        name: &str,
        window: Window2d,
        out_channels: usize,
        init: Init,
        rng: &mut impl Rng,
    ) -> Self {
        // Validates the geometry now rather than at the first forward pass.
        window.out_height();
        window.out_width();
        let patch = window.patch_len();
        let fan_out = window.kernel_h * window.kernel_w * out_channels;
        let w = init.sample(rng, patch, fan_out, patch * out_channels);
        let weight = params.add(
            format!("{name}.weight"),
            backend.upload([patch, out_channels], &w),
        );
        let bias = params.add(format!("{name}.bias"), backend.zeros([1, out_channels]));
        Conv2d {
            weight,
            bias,
            window,
            out_channels,
        }
    }

    /// Output image size `(OH, OW, C_out)`.
    pub fn out_dims(&self) -> (usize, usize, usize) {
        (
            self.window.out_height(),
            self.window.out_width(),
            self.out_channels,
        )
    }

    /// Values per output image, `OH * OW * C_out`.
    pub fn out_len(&self) -> usize {
        let (h, w, c) = self.out_dims();
        h * w * c
    }
}

impl<B: Backend> Module<B> for Conv2d {
    /// The im2col patches `[batch * OH * OW, kh * kw * C_in]`, needed for the weight gradient.
    type Cache = B::Tensor;

    /// # Panics
    /// If `x` is not `[batch, H * W * C_in]`.
    #[track_caller]
    fn forward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        x: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, B::Tensor) {
        check_images(b, x, &self.window, "Conv2d");
        let n = b.shape(x)[0];
        let cols = b.im2col(x, &self.window);
        let pixels = b.shape(&cols)[0];
        let mut y = b.zeros([pixels, self.out_channels]);
        b.matmul(
            1.0,
            &cols,
            Transpose::No,
            p.get(self.weight),
            Transpose::No,
            0.0,
            &mut y,
        );
        b.add_row(&mut y, p.get(self.bias));
        (b.reshape(y, [n, self.out_len()]), cols)
    }

    /// # Panics
    /// If `dy` is not `[batch, OH * OW * C_out]` for the batch of the forward pass.
    #[track_caller]
    fn backward(
        &self,
        b: &B,
        p: &ParamStore<B>,
        cols: B::Tensor,
        dy: &B::Tensor,
        g: &mut Grads<B>,
    ) -> B::Tensor {
        let pixels = b.shape(&cols)[0];
        let n = pixels / (self.window.out_height() * self.window.out_width()).max(1);
        assert_eq!(
            b.shape(dy),
            [n, self.out_len()],
            "Conv2d::backward: dy must be [batch, OH * OW * C_out]"
        );
        // One row per output pixel, so that the bias gradient is a column sum and the weight
        // gradient a single product with the patches.
        let dy = b.reshape(b.duplicate(dy), [pixels, self.out_channels]);
        let dw = g.entry(b, self.weight, [self.window.patch_len(), self.out_channels]);
        b.matmul(1.0, &cols, Transpose::Yes, &dy, Transpose::No, 1.0, dw);
        g.accumulate(b, self.bias, &b.reduce_cols(ReduceOp::Sum, &dy));
        let mut dcols = b.zeros([pixels, self.window.patch_len()]);
        b.matmul(
            1.0,
            &dy,
            Transpose::No,
            p.get(self.weight),
            Transpose::Yes,
            0.0,
            &mut dcols,
        );
        b.col2im(&dcols, &self.window)
    }
}

/// Max pooling over NHWC image rows, per channel, without padding.
///
/// ```
/// use modula_nn::{Ctx, MaxPool2d, Module, ParamStore};
/// use modula_cpu::Cpu;
/// use modula_tensor::Backend;
/// let cpu = Cpu::with_threads(1);
/// let pool = MaxPool2d::new(2, 2, 1, 2, 2); // one 2x2 channel, 2x2 windows, stride 2
/// let x = cpu.upload([1, 4], &[1.0, 4.0, 3.0, 2.0]);
/// let (y, _) = pool.forward(&cpu, &ParamStore::new(), &x, &mut Ctx::eval());
/// assert_eq!(cpu.download(&y)?, vec![4.0]);
/// # Ok::<(), modula_tensor::BackendError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Input size, pooling window and stride (padding is always zero).
    pub window: Window2d,
}

impl MaxPool2d {
    /// Pools `height x width x channels` images with square `kernel x kernel` windows.
    ///
    /// # Panics
    /// If the kernel is larger than the image or the stride is zero.
    #[track_caller]
    pub fn new(height: usize, width: usize, channels: usize, kernel: usize, stride: usize) -> Self {
        let window = Window2d {
            height,
            width,
            channels,
            kernel_h: kernel,
            kernel_w: kernel,
            stride,
            padding: 0,
        };
        window.out_height();
        window.out_width();
        MaxPool2d { window }
    }

    /// Output image size `(OH, OW, C)`.
    pub fn out_dims(&self) -> (usize, usize, usize) {
        (
            self.window.out_height(),
            self.window.out_width(),
            self.window.channels,
        )
    }
}

impl<B: Backend> Module<B> for MaxPool2d {
    /// The input, in which backward finds each window's maximum again.
    type Cache = B::Tensor;

    /// # Panics
    /// If `x` is not `[batch, H * W * C]` or the window has padding.
    #[track_caller]
    fn forward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        x: &B::Tensor,
        _ctx: &mut Ctx,
    ) -> (B::Tensor, B::Tensor) {
        check_images(b, x, &self.window, "MaxPool2d");
        (b.max_pool2d(x, &self.window), b.duplicate(x))
    }

    /// Each output gradient goes to the first maximal input of its window.
    ///
    /// # Panics
    /// If `dy` does not match the forward pass's output shape.
    #[track_caller]
    fn backward(
        &self,
        b: &B,
        _p: &ParamStore<B>,
        x: B::Tensor,
        dy: &B::Tensor,
        _g: &mut Grads<B>,
    ) -> B::Tensor {
        b.max_pool2d_backward(&x, dy, &self.window)
    }
}
