//! [`Select`]: which entries of a dense activation matrix its sparse form keeps.

/// Which entries of a dense matrix a sparse form stores; the others count as zeros.
///
/// NaN is always kept, so that a sparse product propagates it as the dense one does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Select {
    /// Entries with `|v| > t`; `Magnitude(0.0)` ([`Select::NONZERO`]) keeps exactly the
    /// non-zeros.
    Magnitude(f32),
    /// Entries with `v > 0`: the non-zeros of `relu(x)`, so that a layer can build the sparse
    /// form of its ReLU output straight from the pre-activation, in the same single pass.
    Relu,
}

impl Select {
    /// Every non-zero entry: the default.
    pub const NONZERO: Select = Select::Magnitude(0.0);

    /// Whether `v` is stored.
    #[inline(always)]
    pub fn keeps(self, v: f32) -> bool {
        match self {
            Select::Magnitude(t) => v.abs() > t || v.is_nan(),
            Select::Relu => v > 0.0 || v.is_nan(),
        }
    }

    /// The value `v` stands for in the sparse form: `v` where kept, else 0.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        if self.keeps(v) { v } else { 0.0 }
    }

    /// The threshold below which (in magnitude, or in value for [`Select::Relu`]) entries
    /// are dropped, for kernels that compare vectors.
    pub fn threshold(self) -> f32 {
        match self {
            Select::Magnitude(t) => t,
            Select::Relu => 0.0,
        }
    }

    /// Checks that the rule is usable.
    ///
    /// # Panics
    /// If a [`Select::Magnitude`] threshold is negative or NaN.
    #[track_caller]
    pub fn validate(self) {
        if let Select::Magnitude(t) = self {
            assert!(
                t >= 0.0,
                "Select::Magnitude: the threshold must be a non-negative number, got {t}"
            );
        }
    }
}

impl Default for Select {
    fn default() -> Self {
        Select::NONZERO
    }
}
