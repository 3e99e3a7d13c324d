//! Small enums and plain-data descriptors that key the backend's operations.
//!
//! Keeping the op set as data (rather than one trait method per function) is what keeps a
//! second backend small: a WGSL backend maps each variant to one kernel entry point.

/// Shape of a tensor: `[rows, cols]`.
///
/// Every tensor is a row-major matrix. Higher-rank data are flattened per example (images are
/// NHWC rows, see [`Window2d`]), which keeps every kernel a matrix kernel.
pub type Shape = [usize; 2];

/// Whether a matmul operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transpose {
    /// Use the matrix as stored.
    No,
    /// Use the transpose of the stored matrix (free: only strides change).
    Yes,
}

impl Transpose {
    /// `Yes` when `flag` is true.
    pub fn from_bool(flag: bool) -> Self {
        if flag { Transpose::Yes } else { Transpose::No }
    }

    /// Shape `[rows, cols]` of `op(A)` for a stored shape.
    pub fn apply(self, shape: [usize; 2]) -> [usize; 2] {
        match self {
            Transpose::No => shape,
            Transpose::Yes => [shape[1], shape[0]],
        }
    }
}

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `max(x, 0)`; its derivative at 0 is taken as 0.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `exp(x)`.
    Exp,
    /// Natural logarithm.
    Log,
    /// `-x`.
    Neg,
    /// `x * x`.
    Square,
    /// Square root.
    Sqrt,
    /// `|x|`; its derivative at 0 is taken as 0.
    Abs,
    /// `ln(1 + exp(x))`, computed without overflow.
    Softplus,
}

impl UnaryOp {
    /// Every variant, for exhaustive tests.
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Relu,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Neg,
        UnaryOp::Square,
        UnaryOp::Sqrt,
        UnaryOp::Abs,
        UnaryOp::Softplus,
    ];

    /// Applies the function to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Neg => -x,
            UnaryOp::Square => x * x,
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Softplus => softplus(x),
        }
    }

    /// Derivative `dy/dx` at input `x` with output `y = f(x)`; each op uses whichever of the
    /// two is cheaper and more accurate (tanh and sigmoid use `y`).
    #[inline]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            UnaryOp::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Tanh => 1.0 - y * y,
            UnaryOp::Sigmoid => y * (1.0 - y),
            UnaryOp::Exp => y,
            UnaryOp::Log => 1.0 / x,
            UnaryOp::Neg => -1.0,
            UnaryOp::Square => 2.0 * x,
            UnaryOp::Sqrt => 0.5 / y,
            UnaryOp::Abs => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Softplus => sigmoid(x),
        }
    }
}

/// Logistic sigmoid, written so that neither branch overflows.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + exp(x))` without overflow for large `x`.
#[inline]
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Elementwise functions of two tensors of equal shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
}

impl BinaryOp {
    /// Every variant, for exhaustive tests.
    pub const ALL: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

    /// Applies the function to one pair.
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }

    /// Partial derivatives `(d/da, d/db)` at `(a, b)`.
    #[inline]
    pub fn partials(self, a: f32, b: f32) -> (f32, f32) {
        match self {
            BinaryOp::Add => (1.0, 1.0),
            BinaryOp::Sub => (1.0, -1.0),
            BinaryOp::Mul => (b, a),
            BinaryOp::Div => (1.0 / b, -a / (b * b)),
        }
    }
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Arithmetic mean of the elements.
    Mean,
    /// Largest element.
    Max,
}

impl ReduceOp {
    /// Every variant, for exhaustive tests.
    pub const ALL: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max];
}

/// Geometry of a 2-D convolution or pooling window over NHWC images.
///
/// Images are stored as tensors of shape `[batch, height * width * channels]` (NHWC, flattened
/// per example), so that a convolution's im2col matrix times its weights is directly the NHWC
/// output and bias addition is a broadcast row add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub channels: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Window2d {
    /// Output height, `(H + 2p - kh) / s + 1`.
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel or the stride is zero.
    #[track_caller]
    pub fn out_height(&self) -> usize {
        assert!(self.stride > 0, "stride must be positive");
        let padded = self.height + 2 * self.padding;
        assert!(
            padded >= self.kernel_h,
            "kernel height {} exceeds padded height {padded}",
            self.kernel_h
        );
        (padded - self.kernel_h) / self.stride + 1
    }

    /// Output width, `(W + 2p - kw) / s + 1`.
    ///
    /// # Panics
    /// If the padded input is smaller than the kernel or the stride is zero.
    #[track_caller]
    pub fn out_width(&self) -> usize {
        assert!(self.stride > 0, "stride must be positive");
        let padded = self.width + 2 * self.padding;
        assert!(
            padded >= self.kernel_w,
            "kernel width {} exceeds padded width {padded}",
            self.kernel_w
        );
        (padded - self.kernel_w) / self.stride + 1
    }

    /// Elements of one input image, `H * W * C`.
    pub fn in_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Length of one im2col row, `kh * kw * C`.
    pub fn patch_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.channels
    }

    /// Input offset of window element `(ky, kx)` for output pixel `(oy, ox)`, or `None` when it
    /// falls into the padding. Shared by every backend so that they agree on the layout.
    #[inline]
    pub fn source_pixel(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let y = (oy * self.stride + ky).checked_sub(self.padding)?;
        let x = (ox * self.stride + kx).checked_sub(self.padding)?;
        (y < self.height && x < self.width).then_some(y * self.width + x)
    }
}

/// Hyper-parameters of one Adam step, with the bias corrections already folded in by the
/// caller's step counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay (AdamW); 0 disables it.
    pub weight_decay: f32,
    /// Step number, starting at 1, for bias correction.
    pub t: u64,
}

impl AdamStep {
    /// The update applied to one parameter element; backends must match it.
    ///
    /// Returns the new `(param, m, v)`.
    #[inline]
    pub fn update(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let bc1 = 1.0 - self.beta1.powi(self.t.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t.min(i32::MAX as u64) as i32);
        let step = self.lr * (m / bc1) / ((v / bc2).sqrt() + self.eps);
        (p - step - self.lr * self.weight_decay * p, m, v)
    }
}

/// Hyper-parameters of one SGD step with (heavy-ball) momentum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient; 0 gives plain SGD.
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
}

impl SgdStep {
    /// The update applied to one parameter element; backends must match it.
    ///
    /// Returns the new `(param, velocity)`.
    #[inline]
    pub fn update(&self, p: f32, g: f32, vel: f32) -> (f32, f32) {
        let g = g + self.weight_decay * p;
        let vel = self.momentum * vel + g;
        (p - self.lr * vel, vel)
    }
}

/// The three products of a routed (grouped) linear layer; see
/// [`crate::Backend::grouped_matmul`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupedOp {
    /// Forward: `Y_g = X_g W_g`.
    XW,
    /// Input gradient: `dX_g = dY_g W_g^T`.
    XWt,
    /// Weight gradient: `dW_g = X_g^T dY_g`.
    XtY,
}

impl GroupedOp {
    /// Every variant, for exhaustive tests.
    pub const ALL: [GroupedOp; 3] = [GroupedOp::XW, GroupedOp::XWt, GroupedOp::XtY];

    /// `(d_in, d_out)` of one group's block, read off the stacked operand (`b` for `XW` and
    /// `XWt`, `c` for `XtY`) of a product over `groups` groups. It does not validate: the
    /// shapes are the ones [`crate::check::grouped`] accepted (with no groups, both are 0).
    pub fn block_dims(self, b: Shape, c: Shape, groups: usize) -> (usize, usize) {
        let stacked = match self {
            GroupedOp::XW | GroupedOp::XWt => b,
            GroupedOp::XtY => c,
        };
        (stacked[0].checked_div(groups).unwrap_or(0), stacked[1])
    }
}
