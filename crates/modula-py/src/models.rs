//! `modula.ModularMlp` and `modula.LanguageModel`: the networks of `modula-em` as Python
//! objects owning their parameters, with greedy-routed forward passes. `modula.EM` trains
//! them.

use modula_cpu::Cpu;
use modula_em::models::{
    FeedForward, LanguageModel, LmModelConfig, LmWindow, MlpConfig, MlpInput, ModularMlp,
};
use modula_em::{Algo, DenseMatch, Target};
use modula_modular::ControllerOutput;
use modula_nn::{Ctx, ParamStore};
use modula_tensor::Backend;
use numpy::{PyArray2, PyArrayDescrMethods, PyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::arrays::{indices, matrix, out_shaped, out2};
use crate::error::{Error, Kind, Result, detached, guarded};
use crate::layers::{module_count, positive};

/// Every parameter of `params` as a dict of numpy arrays (copies), by name.
fn parameters<'py>(py: Python<'py>, params: &ParamStore<Cpu>) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for id in params.ids() {
        dict.set_item(params.name(id), out2(py, params.get(id).clone()))?;
    }
    Ok(dict)
}

/// A stack of modular linear layers (ReLU between them), each routed by its own controller:
/// the toy task's network.
#[pyclass(module = "modula", name = "ModularMlp")]
pub struct PyModularMlp {
    pub cpu: Cpu,
    pub params: ParamStore<Cpu>,
    pub net: ModularMlp,
    pub config: MlpConfig,
    pub d_in: usize,
    pub d_out: usize,
}

impl PyModularMlp {
    /// The network's input for rows `x` and targets `y`: float32 `[n, d_out]` targets are
    /// regression targets under the Gaussian of variance `variance`, integer `[n]` ones class
    /// indices under a softmax over the `d_out` outputs.
    pub fn input(&self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> Result<MlpInput<Cpu>> {
        let x = matrix(x, "x", Some(self.d_in))?;
        let n = x.nrows();
        let float_targets = y
            .cast::<PyUntypedArray>()
            .is_ok_and(|a| a.dtype().kind() == b'f');
        let target = if float_targets {
            let y = matrix(y, "y", Some(self.d_out))?;
            rows_match("y", y.nrows(), n)?;
            Target::Regression {
                y,
                variance: self.config.variance,
            }
        } else {
            let (shape, classes) = indices(y, "y", 1, self.d_out, "class indices")?;
            rows_match("y", shape[0], n)?;
            Target::Classes(classes)
        };
        Ok(MlpInput { x, target })
    }

    /// The greedy-routed forward pass: predictions `[n, d_out]` and per-row task NLL.
    fn greedy(&self, input: &MlpInput<Cpu>) -> Result<(ndarray::Array2<f32>, Vec<f32>)> {
        let b = &self.cpu;
        let mut route = |_: usize, out: &ControllerOutput<Cpu>| out.greedy(b);
        let out = self.net.forward_tensors(
            b,
            &self.params,
            &input.x,
            &input.target,
            &mut route,
            false,
            false,
            &mut Ctx::eval(),
        )?;
        Ok((out.prediction, b.download(&out.task_nll)?))
    }
}

/// Checks that an argument has the batch's row count.
pub fn rows_match(name: &str, rows: usize, expected: usize) -> Result<()> {
    if rows != expected {
        return Err(Error::new(
            Kind::Array,
            format!("`{name}` has {rows} rows; the batch has {expected}"),
        ));
    }
    Ok(())
}

#[pymethods]
impl PyModularMlp {
    #[new]
    #[pyo3(signature = (d_in, d_out, modules = 6, k = 1, layers = 1, hidden = 16, variance = 0.01, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        d_in: usize,
        d_out: usize,
        modules: usize,
        k: usize,
        layers: usize,
        hidden: usize,
        variance: f32,
        seed: u64,
    ) -> PyResult<Self> {
        Ok(guarded(|| {
            positive("d_in", d_in)?;
            positive("d_out", d_out)?;
            module_count(modules)?;
            let config = MlpConfig {
                modules,
                k,
                layers,
                hidden,
                variance,
            };
            config.validate()?;
            let cpu = crate::cpu();
            let mut params = ParamStore::new();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let net = ModularMlp::new(
                &cpu,
                &mut params,
                d_in,
                d_out,
                &config,
                Algo::Em,
                DenseMatch::Compute,
                0.0,
                &mut rng,
            );
            Ok(PyModularMlp {
                cpu,
                params,
                net,
                config,
                d_in,
                d_out,
            })
        })?)
    }

    /// Input width.
    #[getter]
    fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width (regression targets, or classes).
    #[getter]
    fn d_out(&self) -> usize {
        self.d_out
    }

    /// `(modules, k)` of each modular layer, input side first.
    #[getter]
    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.net.layer_shapes()
    }

    /// The network's outputs `[n, d_out]` for rows `x`, each layer routed greedily (the most
    /// probable modules of its controller).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = matrix(x, "x", Some(self.d_in))?;
        let input = MlpInput {
            target: Target::Regression {
                y: ndarray::Array2::zeros((x.nrows(), self.d_out)),
                variance: self.config.variance,
            },
            x,
        };
        let (prediction, _) = detached(py, || self.greedy(&input))?;
        Ok(out2(py, prediction))
    }

    /// `-log p(y[i] | x[i], greedy routes)` per row, `[n]`.
    fn nll<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let input = self.input(x, y)?;
        let n = input.x.nrows();
        let (_, nll) = detached(py, || self.greedy(&input))?;
        Ok(out_shaped(py, &[n], nll))
    }

    /// Every parameter by name, as numpy arrays (copies).
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        parameters(py, &self.params)
    }

    fn __repr__(&self) -> String {
        format!(
            "ModularMlp(d_in={}, d_out={}, modules={}, k={}, layers={}, hidden={})",
            self.d_in,
            self.d_out,
            self.config.modules,
            self.config.k,
            self.config.layers,
            self.config.hidden
        )
    }
}

/// The word-level language model: an embedding, a modular GRU cell routed by a controller
/// and a softmax over the vocabulary.
#[pyclass(module = "modula", name = "LanguageModel")]
pub struct PyLanguageModel {
    pub cpu: Cpu,
    pub params: ParamStore<Cpu>,
    pub net: LanguageModel,
    pub vocab: usize,
}

impl PyLanguageModel {
    /// A window's input: `ids` and `targets` `[T, n]` word ids, `h0` `[n, hidden]` (zeros when
    /// absent).
    pub fn window(
        &self,
        ids: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        h0: Option<&Bound<'_, PyAny>>,
    ) -> Result<LmWindow<Cpu>> {
        let (shape, words) = indices(ids, "ids", 2, self.vocab, "word ids")?;
        let (target_shape, targets) = indices(targets, "targets", 2, self.vocab, "word ids")?;
        if target_shape != shape {
            return Err(Error::new(
                Kind::Array,
                format!("`targets` has shape {target_shape:?}; it must match `ids`, {shape:?}"),
            ));
        }
        let n = shape[1];
        let h0 = match h0 {
            Some(h) => {
                let h = matrix(h, "h0", Some(self.net.hidden))?;
                rows_match("h0", h.nrows(), n)?;
                h
            }
            None => ndarray::Array2::zeros((n, self.net.hidden)),
        };
        Ok(LmWindow {
            ids: words.chunks(n).map(<[u32]>::to_vec).collect(),
            targets,
            h0,
        })
    }
}

#[pymethods]
impl PyLanguageModel {
    /// `model` holds the `[model]` section of a language-modelling configuration (embed,
    /// hidden, modules, k, dropout, ...; docs/cli.md), unknown keys refused.
    #[new]
    #[pyo3(signature = (vocab, seed = 0, **model))]
    fn new(vocab: usize, seed: u64, model: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let json = match model {
            Some(m) => m
                .py()
                .import("json")?
                .call_method1("dumps", (m,))?
                .extract::<String>()?,
            None => "{}".to_string(),
        };
        Ok(guarded(|| {
            positive("vocab", vocab)?;
            let config: LmModelConfig = serde_json::from_str(&json)
                .map_err(|e| Error::new(Kind::Config, format!("model settings: {e}")))?;
            config.validate()?;
            module_count(config.modules)?;
            let cpu = crate::cpu();
            let mut params = ParamStore::new();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let recurrent = config.recurrent(Algo::Em, DenseMatch::Compute, 0.0, vocab);
            let net = LanguageModel::new(&cpu, &mut params, &config, recurrent, vocab, &mut rng);
            Ok(PyLanguageModel {
                cpu,
                params,
                net,
                vocab,
            })
        })?)
    }

    /// Words in the vocabulary.
    #[getter]
    fn vocab(&self) -> usize {
        self.vocab
    }

    /// Width of the recurrent state.
    #[getter]
    fn hidden(&self) -> usize {
        self.net.hidden
    }

    /// Scores a window greedily: `ids` and `targets` are `[T, n]` word ids (step-major: row
    /// `t` holds the `n` streams' words at step `t`), `h0` the state carried in (zeros when
    /// omitted). Returns `(nll, h_last)`: `-log p(target | words so far)` per position
    /// `[T, n]`, and the state to carry into the next window `[n, hidden]`.
    #[pyo3(signature = (ids, targets, h0 = None))]
    fn nll<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        targets: &Bound<'py, PyAny>,
        h0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let window = self.window(ids, targets, h0)?;
        let shape = [window.ids.len(), window.h0.nrows()];
        let (nll, h_last) = detached(py, || {
            let b = &self.cpu;
            let mut route = |_: usize, out: &ControllerOutput<Cpu>| out.greedy(b);
            let out = self.net.forward_window(
                b,
                &self.params,
                &window.ids,
                &window.targets,
                &window.h0,
                modula_em::Routes::Chosen(&mut route),
                false,
                &mut Ctx::eval(),
            )?;
            Ok((out.nll, out.h_last))
        })?;
        PyTuple::new(
            py,
            [
                out_shaped(py, &shape, nll).into_any(),
                out2(py, h_last).into_any(),
            ],
        )
    }

    /// Every parameter by name, as numpy arrays (copies).
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        parameters(py, &self.params)
    }

    fn __repr__(&self) -> String {
        let (m, k) = self.net.modular_shape().unwrap_or((1, 1));
        format!(
            "LanguageModel(vocab={}, hidden={}, modules={m}, k={k})",
            self.vocab, self.net.hidden
        )
    }
}
