//! PNG and SVG plots drawn with plotters and an embedded font (so no system font is needed):
//! a toy run's loss, module and usage plots ([`toy`]), the language-modelling report's
//! curves and introspection figures ([`lm`]), the image runs' and report's accuracy
//! curves, class-by-module heat map and sparsity figure ([`images`]), the co-activation
//! matrices of `modula modularity` ([`modularity`]), and the continual experiment's accuracy
//! matrices and module usage per task ([`continual`]).

pub mod continual;
pub mod images;
pub mod lm;
pub mod modularity;
pub mod toy;

pub(crate) use toy::{FAMILY, err, register_font, save};
