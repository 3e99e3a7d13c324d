//! `modula.ModularLinear` and `modula.Controller`: the modular layer and its controller as
//! Python objects, each owning its parameters and gradients.

use std::time::Instant;

use modula_cpu::Cpu;
use modula_modular::{
    Controller, ControllerOutput, ModularCache, ModularLinear, Routing, Selection,
};
use modula_nn::{Grads, ParamId, ParamStore};
use modula_tensor::Backend;
use ndarray::Array2;
use numpy::{PyArray2, PyArrayDyn};
use pyo3::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::arrays::{indices, matrix, out_shaped, out2};
use crate::error::{Error, Kind, Result, detached, guarded};

/// Checks a size argument of a constructor: at least 1.
pub fn positive(name: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::new(
            Kind::Config,
            format!("`{name}` is 0; use 1 or more"),
        ));
    }
    Ok(())
}

/// Checks a module count: 1 to 65535, the range the assignment table stores.
pub fn module_count(modules: usize) -> Result<()> {
    if modules == 0 || modules > u16::MAX as usize {
        return Err(Error::new(
            Kind::Config,
            format!("`modules` is {modules}; use 1 to {}", u16::MAX),
        ));
    }
    Ok(())
}

/// A parameter's value as a numpy array of `shape` (a copy: the tensor stays the layer's).
fn parameter<'py>(
    py: Python<'py>,
    params: &ParamStore<Cpu>,
    id: ParamId,
    shape: &[usize],
) -> Bound<'py, PyArrayDyn<f32>> {
    out_shaped(py, shape, params.get(id).iter().copied().collect())
}

/// Replaces a parameter's value with `value`, a float32 array of `shape`.
fn set_parameter(
    params: &mut ParamStore<Cpu>,
    id: ParamId,
    value: &Bound<'_, PyAny>,
    name: &str,
    shape: &[usize],
) -> Result<()> {
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let cols = shape[shape.len() - 1];
    let flat = value
        .call_method1("reshape", ((rows, cols),))
        .map_err(|_| Error::new(Kind::Array, format!("`{name}` must have shape {shape:?}")))?;
    let shape_ok = value
        .getattr("shape")
        .and_then(|s| s.extract::<Vec<usize>>())
        .is_ok_and(|s| s == shape);
    if !shape_ok {
        return Err(Error::new(
            Kind::Array,
            format!("`{name}` must have shape {shape:?}"),
        ));
    }
    *params.get_mut(id) = matrix(&flat, name, Some(cols))?;
    Ok(())
}

/// A gradient as a numpy array of `shape` (zeros when no backward pass has produced one).
fn gradient<'py>(
    py: Python<'py>,
    grads: &Grads<Cpu>,
    id: ParamId,
    shape: &[usize],
) -> Bound<'py, PyArrayDyn<f32>> {
    let values = grads.get(id).map_or_else(
        || vec![0.0; shape.iter().product()],
        |g| g.iter().copied().collect(),
    );
    out_shaped(py, shape, values)
}

/// A layer of `modules` linear modules `x W_m + b_m`; each row runs through the `k` modules
/// its selection names and their outputs are summed.
#[pyclass(module = "modula", name = "ModularLinear")]
pub struct PyModularLinear {
    cpu: Cpu,
    params: ParamStore<Cpu>,
    grads: Grads<Cpu>,
    layer: ModularLinear,
    k: usize,
    /// What the last forward pass kept for backward.
    cache: Option<(ModularCache<Cpu>, Routing)>,
}

impl PyModularLinear {
    /// The selection `[n, k]` of `n` rows, checked against the layer.
    fn selection(&self, obj: &Bound<'_, PyAny>, rows: usize) -> Result<Selection> {
        let (shape, values) = indices(obj, "selection", 2, self.layer.modules, "module indices")?;
        if shape != [rows, self.k] {
            return Err(Error::new(
                Kind::Array,
                format!(
                    "`selection` has shape {shape:?}; it must be [{rows}, {}]: one row of k = {} module indices per input row",
                    self.k, self.k
                ),
            ));
        }
        Ok(Selection::new(self.k, values))
    }

    /// The forward pass on a checked input: what `forward` computes after converting its
    /// arguments, and what the overhead bench times in Rust.
    fn run_forward(
        &self,
        x: &Array2<f32>,
        selection: &Selection,
    ) -> (Array2<f32>, ModularCache<Cpu>, Routing) {
        let routing = Routing::new(selection, self.layer.modules);
        let (y, cache) = self
            .layer
            .forward(&self.cpu, &self.params, x, &routing, None);
        (y, cache, routing)
    }
}

#[pymethods]
impl PyModularLinear {
    #[new]
    #[pyo3(signature = (d_in, d_out, modules, k, seed = 0))]
    fn new(d_in: usize, d_out: usize, modules: usize, k: usize, seed: u64) -> PyResult<Self> {
        Ok(guarded(|| {
            positive("d_in", d_in)?;
            positive("d_out", d_out)?;
            module_count(modules)?;
            positive("k", k)?;
            let cpu = crate::cpu();
            let mut params = ParamStore::new();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let layer =
                ModularLinear::new(&cpu, &mut params, "layer", modules, d_in, d_out, &mut rng);
            Ok(PyModularLinear {
                cpu,
                params,
                grads: Grads::new(),
                layer,
                k,
                cache: None,
            })
        })?)
    }

    /// Input width.
    #[getter]
    fn d_in(&self) -> usize {
        self.layer.d_in
    }

    /// Output width.
    #[getter]
    fn d_out(&self) -> usize {
        self.layer.d_out
    }

    /// Modules in the pool, `M`.
    #[getter]
    fn modules(&self) -> usize {
        self.layer.modules
    }

    /// Modules per row, `K`.
    #[getter]
    fn k(&self) -> usize {
        self.k
    }

    /// `y[i] = sum over the distinct modules m of selection[i] of x[i] W_m + b_m`.
    fn forward<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        selection: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = matrix(x, "x", Some(self.layer.d_in))?;
        let selection = self.selection(selection, x.nrows())?;
        let this = &*self;
        let (y, cache, routing) = detached(py, || Ok(this.run_forward(&x, &selection)))?;
        self.cache = Some((cache, routing));
        Ok(out2(py, y))
    }

    /// Backward of the last `forward`: adds the gradients of the weights and biases into
    /// `weight_grad` and `bias_grad`, and returns `dL/dx`.
    fn backward<'py>(
        &mut self,
        py: Python<'py>,
        dy: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let Some((cache, routing)) = self.cache.take() else {
            return Err(Error::new(
                Kind::Run,
                "backward needs a forward pass first (each forward allows one backward)",
            )
            .into());
        };
        let dy = matrix(dy, "dy", Some(self.layer.d_out))?;
        if dy.nrows() != routing.rows() {
            let rows = routing.rows();
            self.cache = Some((cache, routing));
            return Err(Error::new(
                Kind::Array,
                format!("`dy` has {} rows; the forward pass had {rows}", dy.nrows()),
            )
            .into());
        }
        let (cpu, params, grads, layer) = (&self.cpu, &self.params, &mut self.grads, &self.layer);
        let dx = detached(py, || {
            Ok(layer.backward(cpu, params, &routing, cache, &dy, grads).0)
        })?;
        Ok(out2(py, dx))
    }

    /// Forgets the accumulated gradients (the next backward starts from zero).
    fn zero_grad(&mut self) {
        self.grads.reset();
    }

    /// The modules' weights, `[modules, d_in, d_out]` (a copy).
    #[getter]
    fn weight<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let l = &self.layer;
        parameter(py, &self.params, l.weight, &[l.modules, l.d_in, l.d_out])
    }

    #[setter]
    fn set_weight(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let l = &self.layer;
        let shape = [l.modules, l.d_in, l.d_out];
        Ok(set_parameter(
            &mut self.params,
            l.weight,
            value,
            "weight",
            &shape,
        )?)
    }

    /// The modules' biases, `[modules, d_out]` (a copy).
    #[getter]
    fn bias<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let l = &self.layer;
        parameter(py, &self.params, l.bias, &[l.modules, l.d_out])
    }

    #[setter]
    fn set_bias(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let l = &self.layer;
        let shape = [l.modules, l.d_out];
        Ok(set_parameter(
            &mut self.params,
            l.bias,
            value,
            "bias",
            &shape,
        )?)
    }

    /// The weights' accumulated gradient, `[modules, d_in, d_out]`.
    #[getter]
    fn weight_grad<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let l = &self.layer;
        gradient(py, &self.grads, l.weight, &[l.modules, l.d_in, l.d_out])
    }

    /// The biases' accumulated gradient, `[modules, d_out]`.
    #[getter]
    fn bias_grad<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let l = &self.layer;
        gradient(py, &self.grads, l.bias, &[l.modules, l.d_out])
    }

    /// Seconds taken by each of `repeats` calls of the Rust forward pass alone on `x` and
    /// `selection` (already converted, so no Python in the loop): the Rust side of the
    /// overhead bench (benches/python/overhead.py).
    fn _time_forward(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        selection: &Bound<'_, PyAny>,
        repeats: usize,
    ) -> PyResult<Vec<f64>> {
        let x = matrix(x, "x", Some(self.layer.d_in))?;
        let selection = self.selection(selection, x.nrows())?;
        Ok(detached(py, || {
            Ok((0..repeats)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(self.run_forward(&x, &selection));
                    t.elapsed().as_secs_f64()
                })
                .collect())
        })?)
    }

    fn __repr__(&self) -> String {
        let l = &self.layer;
        format!(
            "ModularLinear(d_in={}, d_out={}, modules={}, k={})",
            l.d_in, l.d_out, l.modules, self.k
        )
    }
}

/// A controller: `k` categorical distributions over `modules` modules per input row,
/// `p(a | x) = prod_k softmax(W_k x + c_k)[a_k]`.
#[pyclass(module = "modula", name = "Controller")]
pub struct PyController {
    cpu: Cpu,
    params: ParamStore<Cpu>,
    controller: Controller,
    d_in: usize,
    /// The stream `sample` draws from, seeded by the constructor's seed.
    rng: ChaCha8Rng,
}

impl PyController {
    fn output(&self, x: &Bound<'_, PyAny>) -> Result<(Array2<f32>, ControllerOutput<Cpu>)> {
        let x = matrix(x, "x", Some(self.d_in))?;
        let out = guarded(|| Ok(self.controller.forward(&self.cpu, &self.params, &x)))?;
        Ok((x, out))
    }

    fn selection_out<'py>(
        &self,
        py: Python<'py>,
        rows: usize,
        s: Selection,
    ) -> Bound<'py, PyArrayDyn<u32>> {
        out_shaped(py, &[rows, self.controller.k], s.as_slice().to_vec())
    }
}

#[pymethods]
impl PyController {
    #[new]
    #[pyo3(signature = (d_in, modules, k, seed = 0))]
    fn new(d_in: usize, modules: usize, k: usize, seed: u64) -> PyResult<Self> {
        Ok(guarded(|| {
            positive("d_in", d_in)?;
            module_count(modules)?;
            positive("k", k)?;
            let cpu = crate::cpu();
            let mut params = ParamStore::new();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let controller = Controller::new(&cpu, &mut params, "ctrl", d_in, modules, k, &mut rng);
            Ok(PyController {
                cpu,
                params,
                controller,
                d_in,
                rng,
            })
        })?)
    }

    /// Modules to choose from, `M`.
    #[getter]
    fn modules(&self) -> usize {
        self.controller.modules
    }

    /// Slots per row, `K`.
    #[getter]
    fn k(&self) -> usize {
        self.controller.k
    }

    /// The per-slot log-probabilities of each row of `x`, `[n, k, modules]`.
    fn log_probs<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (x, out) = self.output(x)?;
        let c = &self.controller;
        Ok(out_shaped(
            py,
            &[x.nrows(), c.k, c.modules],
            out.log_probs.into_raw_vec_and_offset().0,
        ))
    }

    /// One selection `[n, k]` per row of `x`, each slot drawn independently from its
    /// distribution (with replacement), from the controller's own seeded stream.
    fn sample<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
        let (x, out) = self.output(x)?;
        let s = out.sample(&self.cpu, &mut self.rng).map_err(Error::from)?;
        Ok(self.selection_out(py, x.nrows(), s))
    }

    /// The most probable module of each slot, `[n, k]` (ties go to the lower index).
    fn greedy<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
        let (x, out) = self.output(x)?;
        let s = out.greedy(&self.cpu).map_err(Error::from)?;
        Ok(self.selection_out(py, x.nrows(), s))
    }

    /// `log p(selection[i] | x[i])` per row, `[n]`.
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        selection: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (x, out) = self.output(x)?;
        let c = &self.controller;
        let (shape, values) = indices(selection, "selection", 2, c.modules, "module indices")?;
        if shape != [x.nrows(), c.k] {
            return Err(Error::new(
                Kind::Array,
                format!(
                    "`selection` has shape {shape:?}; it must be [{}, {}]",
                    x.nrows(),
                    c.k
                ),
            )
            .into());
        }
        let s = Selection::new(c.k, values);
        let lp = guarded(|| Ok(c.log_prob(&self.cpu, &out, &s)))?;
        let values = self.cpu.download(&lp).map_err(Error::from)?;
        Ok(out_shaped(py, &[x.nrows()], values))
    }

    /// The logit map's weight, `[d_in, k * modules]` (a copy).
    #[getter]
    fn weight<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let c = &self.controller;
        parameter(
            py,
            &self.params,
            c.linear.weight,
            &[self.d_in, c.k * c.modules],
        )
    }

    #[setter]
    fn set_weight(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = &self.controller;
        let shape = [self.d_in, c.k * c.modules];
        Ok(set_parameter(
            &mut self.params,
            c.linear.weight,
            value,
            "weight",
            &shape,
        )?)
    }

    /// The logit map's bias, `[1, k * modules]` (a copy).
    #[getter]
    fn bias<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        let c = &self.controller;
        parameter(py, &self.params, c.linear.bias, &[1, c.k * c.modules])
    }

    #[setter]
    fn set_bias(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = &self.controller;
        let shape = [1, c.k * c.modules];
        Ok(set_parameter(
            &mut self.params,
            c.linear.bias,
            value,
            "bias",
            &shape,
        )?)
    }

    fn __repr__(&self) -> String {
        let c = &self.controller;
        format!(
            "Controller(d_in={}, modules={}, k={})",
            self.d_in, c.modules, c.k
        )
    }
}
