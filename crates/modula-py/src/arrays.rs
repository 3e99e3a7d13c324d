//! numpy arrays in and out. Inputs are checked (a numpy array, the dtype, the number of
//! dimensions, the shape, C-contiguity) and read in place; the backend's tensors own their
//! memory, so an input is copied once into one. Outputs hand a Rust array's buffer to numpy
//! without a copy.

use ndarray::{Array2, ArrayD, IxDyn};
use numpy::{
    PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods, dtype,
};
use pyo3::prelude::*;

use crate::error::{Error, Kind, Result};

/// Checks that `obj` is a C-contiguous numpy array named `name` in messages, with `ndim`
/// dimensions, and returns it with its shape.
fn untyped<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
) -> Result<(&'a Bound<'py, PyUntypedArray>, Vec<usize>)> {
    let array = obj.cast::<PyUntypedArray>().map_err(|_| {
        let type_name = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        Error::new(
            Kind::DType,
            format!("`{name}` must be a numpy array, not {type_name}; pass np.asarray({name})"),
        )
    })?;
    let shape = array.shape().to_vec();
    if shape.len() != ndim {
        return Err(Error::new(
            Kind::Array,
            format!(
                "`{name}` has shape {shape:?}; it must have {ndim} dimension{}",
                if ndim == 1 { "" } else { "s" }
            ),
        ));
    }
    if !array.is_c_contiguous() {
        return Err(Error::new(
            Kind::Array,
            format!(
                "`{name}` is not C-contiguous (a transposed or strided view); pass np.ascontiguousarray({name})"
            ),
        ));
    }
    Ok((array, shape))
}

/// A float32 matrix `[rows, cols]` (`cols` checked when given), copied into a backend tensor.
pub fn matrix(obj: &Bound<'_, PyAny>, name: &str, cols: Option<usize>) -> Result<Array2<f32>> {
    let (array, shape) = untyped(obj, name, 2)?;
    let py = obj.py();
    if !array.dtype().is_equiv_to(&dtype::<f32>(py)) {
        return Err(Error::new(
            Kind::DType,
            format!(
                "`{name}` has dtype {}; modula computes in float32, so pass {name}.astype(np.float32)",
                array.dtype()
            ),
        ));
    }
    if let Some(c) = cols.filter(|&c| c != shape[1]) {
        return Err(Error::new(
            Kind::Array,
            format!("`{name}` has shape {shape:?}; it must have {c} columns (rows of width {c})"),
        ));
    }
    if shape[0] == 0 {
        return Err(Error::new(
            Kind::Array,
            format!("`{name}` has no rows; pass at least one"),
        ));
    }
    let typed = array
        .cast::<PyArray2<f32>>()
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    let view = typed
        .try_readonly()
        .map_err(|e| Error::new(Kind::Array, format!("`{name}` cannot be read: {e}")))?;
    Ok(view.as_array().to_owned())
}

/// An integer array of `ndim` dimensions (any integer dtype), as its shape and its values
/// checked to lie in `0..bound`; `what` says what the values are, for messages.
pub fn indices(
    obj: &Bound<'_, PyAny>,
    name: &str,
    ndim: usize,
    bound: usize,
    what: &str,
) -> Result<(Vec<usize>, Vec<u32>)> {
    let (array, shape) = untyped(obj, name, ndim)?;
    let kind = array.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(Error::new(
            Kind::DType,
            format!(
                "`{name}` has dtype {}; {what} are integers, so pass an integer array",
                array.dtype()
            ),
        ));
    }
    // Any integer dtype is accepted; numpy converts it to int64 (a copy only when it is not
    // int64 already), and the values are range-checked below.
    let copy = pyo3::types::PyDict::new(obj.py());
    copy.set_item("copy", false)
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    let wide = array
        .call_method("astype", ("int64",), Some(&copy))
        .and_then(|a| a.cast_into::<PyArrayDyn<i64>>().map_err(PyErr::from))
        .map_err(|e| Error::new(Kind::Internal, e.to_string()))?;
    let view = wide
        .try_readonly()
        .map_err(|e| Error::new(Kind::Array, format!("`{name}` cannot be read: {e}")))?;
    let values = view
        .as_array()
        .iter()
        .map(|&v| {
            u32::try_from(v)
                .ok()
                .filter(|&u| (u as usize) < bound)
                .ok_or_else(|| {
                    Error::new(
                        Kind::Array,
                        format!("`{name}` holds {v}; {what} lie in 0..{bound}"),
                    )
                })
        })
        .collect::<Result<Vec<u32>>>()?;
    if values.is_empty() {
        return Err(Error::new(
            Kind::Array,
            format!("`{name}` is empty; pass at least one row"),
        ));
    }
    Ok((shape, values))
}

/// Hands `a` to numpy without copying its buffer.
pub fn out2(py: Python<'_>, a: Array2<f32>) -> Bound<'_, PyArray2<f32>> {
    PyArray2::from_owned_array(py, a)
}

/// Hands `data` to numpy as an array of `shape`, without copying.
///
/// # Panics
/// If `data` does not hold `shape`'s element count (a bug in the caller).
pub fn out_shaped<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
    data: Vec<T>,
) -> Bound<'py, PyArrayDyn<T>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).expect("the shape matches the data");
    PyArrayDyn::from_owned_array(py, a)
}
