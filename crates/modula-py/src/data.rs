//! `modula.data.load`: the data sets `modula data info` reads (Penn Treebank, text files,
//! IDX images and arrays, CIFAR-10, MNIST JSON), as numpy arrays. The loaders are
//! `modula-data`'s, so a file the CLI refuses raises the same message as `modula.DataError`.

use std::path::PathBuf;

use modula_data::info::{Format, Loaded, load as load_resolved, resolve};
use modula_data::{ImageSet, TokenSplit};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::out_shaped;
use crate::error::{Error, Kind, detached};

/// A split of token ids as a 1-D uint32 array (the buffer handed over, not copied).
fn tokens<'py>(py: Python<'py>, split: TokenSplit) -> Bound<'py, PyAny> {
    let n = split.tokens.len();
    out_shaped(py, &[n], split.tokens).into_any()
}

/// An image split as `(images, labels)`: uint8 `[n, height, width, channels]` and uint8 `[n]`.
fn images<'py>(py: Python<'py>, set: ImageSet) -> PyResult<Bound<'py, PyAny>> {
    let n = set.labels.len();
    let shape = [n, set.height, set.width, set.channels];
    let pixels = out_shaped(py, &shape, set.pixels);
    let labels = out_shaped(py, &[n], set.labels);
    Ok((pixels, labels).into_pyobject(py)?.into_any())
}

/// Loads `target` (a data set name such as "ptb" or "fashion-mnist", looked up in `data_dir`,
/// else `$MODULA_DATA`, else `./data`; or a file or directory) in `format` (guessed when
/// absent) and returns a dict of numpy arrays.
#[pyfunction]
#[pyo3(signature = (target, format = None, data_dir = None))]
pub fn load<'py>(
    py: Python<'py>,
    target: String,
    format: Option<String>,
    data_dir: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let format = match format.as_deref() {
        None => None,
        Some(name) => Some(
            name.parse::<Format>()
                .map_err(|e| Error::new(Kind::Config, format!("`format`: {e}")))?,
        ),
    };
    let (resolved, loaded) = detached(py, || {
        let dir = modula_data::data_dir(data_dir.as_deref());
        let resolved = resolve(&target, format, &dir)?;
        let loaded = load_resolved(&resolved)?;
        Ok((resolved, loaded))
    })?;
    let dict = PyDict::new(py);
    dict.set_item("name", resolved.name)?;
    dict.set_item("path", resolved.path)?;
    dict.set_item("format", resolved.format.name())?;
    match loaded {
        Loaded::Text(corpus) => {
            dict.set_item("vocab", corpus.vocab.words().to_vec())?;
            dict.set_item("train", tokens(py, corpus.train))?;
            dict.set_item("valid", tokens(py, corpus.valid))?;
            dict.set_item("test", tokens(py, corpus.test))?;
        }
        Loaded::Images(set) => {
            dict.set_item("classes", set.class_names)?;
            dict.set_item("train", images(py, set.train)?)?;
            let test = set.test.map(|t| images(py, t)).transpose()?;
            dict.set_item("test", test)?;
        }
        Loaded::Array(array) => {
            dict.set_item("array", out_shaped(py, &array.dims, array.data))?;
        }
    }
    Ok(dict)
}
