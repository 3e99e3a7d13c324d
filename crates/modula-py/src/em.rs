//! `modula.EM`: generalized EM's two steps on batches the user chooses, for putting modula's
//! EM inside one's own training loop. The E-step and the M-step's gradient are
//! `modula_em`'s own (`Em` behind the `Algorithm` trait); this file only builds their batches
//! from numpy arrays and applies Adam, as the trainer does.

use modula_cpu::Cpu;
use modula_em::algo::em::Em;
use modula_em::{
    Algo, Algorithm, AssignmentTable, Batch, EStepSettings, Group, Model, TrainSettings, stream,
};
use modula_nn::{Adam, Ctx, Grads, Optimizer, ParamStore};
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{indices, out_shaped, out2};
use crate::error::{Error, Kind, Result, detached, guarded};
use crate::models::{PyLanguageModel, PyModularMlp, rows_match};

/// Stream ids of an M-step's and an E-step's random choices (the E-step's candidates, the
/// dropout masks), apart from each other for every step count.
const STREAM_E_STEP: u64 = 1 << 62;
const STREAM_CTX: u64 = 1 << 60;
/// With the table's size before the growth: the assignments of examples a growable table
/// registers as their indices arrive.
const STREAM_GROW: u64 = 1 << 58;

/// How far past its size one batch may grow a table without `examples`: an index further out
/// is more likely a mistake than a training set numbered from 0 (and would allocate the rows
/// in between).
const MAX_GROWTH: usize = 1 << 24;

/// The network an `EM` trains.
enum Trained {
    Mlp(Py<PyModularMlp>),
    Lm(Py<PyLanguageModel>),
}

/// EM's state apart from the network: the assignment table (inside `Em`), Adam and the
/// gradient buffers.
struct State {
    em: Em,
    optimizer: Adam<Cpu>,
    grads: Grads<Cpu>,
    settings: TrainSettings,
    seed: u64,
    /// The training set's size when `EM` was given one; without it the table grows to the
    /// largest index a batch names.
    fixed: Option<usize>,
    /// Steps taken, E and M together: step `i` draws from its own streams of the seed.
    step: u64,
}

/// What an M-step reports.
struct MStats {
    nll: f64,
    ctrl_nll: f64,
    usage: Vec<Vec<u64>>,
    carry: Option<ndarray::Array2<f32>>,
}

impl State {
    /// The table: every key of the training set, and their stored selections.
    fn table(&self) -> &AssignmentTable {
        Algorithm::<Cpu, modula_em::models::ModularMlp>::table(&self.em)
            .expect("EM keeps an assignment table")
    }

    /// Keys in the table.
    fn examples(&self) -> usize {
        self.table().examples()
    }

    /// The largest index plus one a batch may name: the training set's size, or, for a
    /// growable table, [`MAX_GROWTH`] past its current size (at most the `u32` keys).
    fn index_bound(&self) -> usize {
        self.fixed
            .unwrap_or_else(|| (self.examples() + MAX_GROWTH).min(u32::MAX as usize + 1))
    }

    /// Registers the examples up to the largest of `keys` in a growable table (new rows drawn
    /// from a stream of the seed named by the table's size before the growth).
    fn register(&mut self, keys: impl Iterator<Item = u32>) {
        let rows = keys.map(|k| k as usize + 1).max().unwrap_or(0);
        let have = self.examples();
        if rows > have {
            let mut rng = stream(self.seed, STREAM_GROW | have as u64);
            Algorithm::<Cpu, modula_em::models::ModularMlp>::grow(&mut self.em, rows, &mut rng);
        }
    }

    fn e_step<M: Model<Cpu>>(
        &mut self,
        cpu: &Cpu,
        model: &M,
        params: &ParamStore<Cpu>,
        batch: &Batch<M::Input>,
    ) -> Result<modula_em::EStats> {
        let mut rng = stream(self.seed, self.step | STREAM_E_STEP);
        let mut ctx = Ctx {
            train: false,
            rng: stream(self.seed, self.step | STREAM_E_STEP | STREAM_CTX),
        };
        let s = modula_em::algo::StepContext {
            model,
            backend: cpu,
            params,
            grads: &mut self.grads,
            rng: &mut rng,
            ctx: &mut ctx,
            replicas: None,
        };
        let stats = Algorithm::<Cpu, M>::e_step(&mut self.em, s, batch)
            .ok_or_else(|| Error::new(Kind::Internal, "EM ran no E-step"))??;
        self.step += 1;
        Ok(stats)
    }

    fn m_step<M: Model<Cpu>>(
        &mut self,
        cpu: &Cpu,
        model: &M,
        params: &mut ParamStore<Cpu>,
        batch: &Batch<M::Input>,
    ) -> Result<MStats> {
        let mut rng = stream(self.seed, self.step);
        let mut ctx = Ctx {
            train: true,
            rng: stream(self.seed, self.step | STREAM_CTX),
        };
        self.grads.reset();
        let s = modula_em::algo::StepContext {
            model,
            backend: cpu,
            params,
            grads: &mut self.grads,
            rng: &mut rng,
            ctx: &mut ctx,
            replicas: None,
        };
        let g = Algorithm::<Cpu, M>::gradient(&mut self.em, s, batch)?;
        let loss = g.stats.loss();
        if !loss.is_finite() {
            return Err(Error::new(
                Kind::Diverged,
                format!(
                    "the M-step's loss is {loss} at step {}; the parameters were left as they were: lower `lr` or set `grad_clip`",
                    self.step
                ),
            ));
        }
        // As the trainer does: derived parameters (shared-base modules) pass their gradients
        // on before clipping, and are recomputed from what the optimiser moved.
        model.fold_grads(cpu, &mut self.grads);
        if self.settings.grad_clip > 0.0 {
            self.grads.clip_norm(cpu, self.settings.grad_clip)?;
        }
        self.optimizer.step(cpu, params, &self.grads);
        model.refresh(cpu, params);
        self.step += 1;
        Ok(MStats {
            nll: g.stats.nll,
            ctrl_nll: g.stats.ctrl_nll,
            usage: g.stats.usage,
            carry: g.carry,
        })
    }
}

/// Generalized (Viterbi) EM for a `ModularMlp` or a `LanguageModel`.
#[pyclass(module = "modula", name = "EM")]
pub struct PyEm {
    network: Trained,
    state: State,
}

/// A network `EM` trains: how it reads a batch, and its parts for a step.
trait Network: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::False> {
    /// The network of `modula-em`.
    type Model: Model<Cpu, Input: Sync> + Sync;

    /// The batch of `batch` whose rows have the table keys `keys` (below `examples`).
    fn batch(
        &self,
        batch: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
        examples: usize,
    ) -> Result<Batch<<Self::Model as Model<Cpu>>::Input>>;

    /// The backend, the network and its parameters.
    fn parts(&mut self) -> (&Cpu, &Self::Model, &mut ParamStore<Cpu>);
}

impl Network for PyModularMlp {
    type Model = modula_em::models::ModularMlp;

    /// `(x, y)`, and one group per layer, all keyed by the rows' example indices.
    fn batch(
        &self,
        batch: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
        examples: usize,
    ) -> Result<Batch<modula_em::models::MlpInput<Cpu>>> {
        let (x, y) = batch
            .extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()
            .map_err(|_| {
                Error::new(
                    Kind::DType,
                    "`batch` must be a tuple (x, y) of numpy arrays for a ModularMlp",
                )
            })?;
        let input = self.input(&x, &y)?;
        let n = input.x.nrows();
        let (shape, keys) = indices(keys, "indices", 1, examples, "example indices")?;
        rows_match("indices", shape[0], n)?;
        let groups = (0..self.net.layers.len())
            .map(|layer| Group {
                layer,
                keys: keys.clone(),
            })
            .collect();
        Ok(Batch {
            input,
            groups,
            examples: n,
            units: n,
        })
    }

    fn parts(&mut self) -> (&Cpu, &Self::Model, &mut ParamStore<Cpu>) {
        (&self.cpu, &self.net, &mut self.params)
    }
}

impl Network for PyLanguageModel {
    type Model = modula_em::models::LanguageModel;

    /// `(ids, targets)` or `(ids, targets, h0)`, and one group per time step keyed by the
    /// positions' indices `[T, n]`.
    fn batch(
        &self,
        batch: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
        examples: usize,
    ) -> Result<Batch<modula_em::models::LmWindow<Cpu>>> {
        let parts: Vec<Bound<'_, PyAny>> = batch.extract().map_err(|_| {
            Error::new(
                Kind::DType,
                "`batch` must be a tuple (ids, targets) or (ids, targets, h0) for a LanguageModel",
            )
        })?;
        let (ids, targets, h0) = match parts.as_slice() {
            [ids, targets] => (ids, targets, None),
            [ids, targets, h0] => (ids, targets, Some(h0)),
            _ => {
                return Err(Error::new(
                    Kind::DType,
                    format!(
                        "`batch` has {} items; pass (ids, targets) or (ids, targets, h0)",
                        parts.len()
                    ),
                ));
            }
        };
        let input = self.window(ids, targets, h0)?;
        let (steps, n) = (input.ids.len(), input.h0.nrows());
        let (shape, keys) = indices(keys, "indices", 2, examples, "token positions")?;
        if shape != [steps, n] {
            return Err(Error::new(
                Kind::Array,
                format!("`indices` has shape {shape:?}; it must match `ids`, [{steps}, {n}]"),
            ));
        }
        let groups = keys
            .chunks(n)
            .map(|k| Group {
                layer: 0,
                keys: k.to_vec(),
            })
            .collect();
        Ok(Batch {
            input,
            groups,
            examples: n,
            units: steps * n,
        })
    }

    fn parts(&mut self) -> (&Cpu, &Self::Model, &mut ParamStore<Cpu>) {
        (&self.cpu, &self.net, &mut self.params)
    }
}

/// Which of EM's steps to take.
#[derive(Clone, Copy)]
enum Which {
    E,
    M,
}

/// What a step reports.
enum Outcome {
    E(modula_em::EStats),
    M(MStats),
}

/// Takes step `which` on `net` with the GIL released.
fn run_step<N: Network>(
    py: Python<'_>,
    net: &Py<N>,
    state: &mut State,
    which: Which,
    batch: &Bound<'_, PyAny>,
    keys: &Bound<'_, PyAny>,
) -> PyResult<Outcome> {
    // A model in use by another thread's call raises PyO3's "already borrowed" RuntimeError.
    let mut guard = net.bind(py).try_borrow_mut()?;
    let batch = guard.batch(batch, keys, state.index_bound())?;
    state.register(batch.groups.iter().flat_map(|g| g.keys.iter().copied()));
    let (cpu, model, params) = guard.parts();
    Ok(detached(py, || match which {
        Which::E => state.e_step(cpu, model, params, &batch).map(Outcome::E),
        Which::M => state.m_step(cpu, model, params, &batch).map(Outcome::M),
    })?)
}

impl PyEm {
    /// Takes step `which` on the network.
    fn step(
        &mut self,
        py: Python<'_>,
        which: Which,
        batch: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
    ) -> PyResult<Outcome> {
        match &self.network {
            Trained::Mlp(net) => run_step(py, net, &mut self.state, which, batch, indices),
            Trained::Lm(net) => run_step(py, net, &mut self.state, which, batch, indices),
        }
    }
}

#[pymethods]
impl PyEm {
    /// EM for `model` over a training set of `examples` examples (token positions for a
    /// language model), whose assignments start uniformly random from `seed`. Without
    /// `examples` the table starts empty and grows as batches name new indices (a continual
    /// loop's later tasks): each new example's assignment is drawn when it first arrives.
    #[new]
    #[pyo3(signature = (model, examples = None, samples = 10, lr = 0.01, grad_clip = 0.0, ctrl_weight = 1.0, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &Bound<'_, PyAny>,
        examples: Option<usize>,
        samples: usize,
        lr: f32,
        grad_clip: f32,
        ctrl_weight: f32,
        seed: u64,
    ) -> PyResult<Self> {
        let (network, shapes) = if let Ok(mlp) = model.cast::<PyModularMlp>() {
            let shapes = mlp.borrow().net.layer_shapes();
            (Trained::Mlp(mlp.clone().unbind()), shapes)
        } else if let Ok(lm) = model.cast::<PyLanguageModel>() {
            let shapes = Model::<Cpu>::table_shapes(&lm.borrow().net);
            (Trained::Lm(lm.clone().unbind()), shapes)
        } else {
            return Err(Error::new(
                Kind::DType,
                "`model` must be a modula.ModularMlp or a modula.LanguageModel",
            )
            .into());
        };
        Ok(guarded(|| {
            if let Some(examples) = examples {
                crate::layers::positive("examples", examples)?;
                // The table's keys are u32 (batches name their rows by them).
                if examples > u32::MAX as usize {
                    return Err(Error::new(
                        Kind::Config,
                        format!(
                            "`examples` is {examples}; EM's table holds at most {} keys",
                            u32::MAX
                        ),
                    ));
                }
            }
            let settings = TrainSettings {
                algo: Algo::Em,
                lr,
                grad_clip,
                estep: EStepSettings::paths(samples),
                e_every: 1,
                ctrl_weight,
                ctrl_mask: false,
                reinforce_decay: 0.9,
                divergence_factor: 0.0,
            };
            settings.validate(0.0)?;
            let table =
                AssignmentTable::random(examples.unwrap_or(0), &shapes, &mut stream(seed, 1 << 61));
            Ok(PyEm {
                network,
                state: State {
                    em: Em::new(table, &settings),
                    optimizer: Adam::new(lr),
                    grads: Grads::new(),
                    settings,
                    seed,
                    fixed: examples,
                    step: 0,
                },
            })
        })?)
    }

    /// Examples in the assignment table: the training set's size, or for a table created
    /// without `examples`, the largest index seen so far plus one.
    #[getter]
    fn examples(&self) -> usize {
        self.state.examples()
    }

    /// Steps taken so far (E-steps and M-steps together).
    #[getter]
    fn steps(&self) -> u64 {
        self.state.step
    }

    /// The E-step on `batch` (`(x, y)` for a ModularMlp; `(ids, targets[, h0])` for a
    /// LanguageModel) whose rows are the examples `indices`: each example's stored
    /// assignment is replaced by the best of `samples` candidates when that scores higher.
    /// Returns `{"changed", "score_before", "score_after"}`.
    fn e_step<'py>(
        &mut self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let Outcome::E(stats) = self.step(py, Which::E, batch, indices)? else {
            unreachable!("an E-step reports E-step statistics")
        };
        let dict = PyDict::new(py);
        dict.set_item("changed", stats.changed)?;
        dict.set_item("score_before", stats.score_before)?;
        dict.set_item("score_after", stats.score_after)?;
        Ok(dict)
    }

    /// The M-step on `batch` with the stored assignments of `indices`: one Adam step on
    /// `-mean log p(y | x, a*) - ctrl_weight * mean log p(a* | x)`. Returns `{"nll",
    /// "ctrl_nll", "usage"}` (per layer, how many rows each module served), and for a
    /// language model `"h_last"`, the state to carry into the next window.
    fn m_step<'py>(
        &mut self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let Outcome::M(stats) = self.step(py, Which::M, batch, indices)? else {
            unreachable!("an M-step reports M-step statistics")
        };
        let dict = PyDict::new(py);
        dict.set_item("nll", stats.nll)?;
        dict.set_item("ctrl_nll", stats.ctrl_nll)?;
        dict.set_item("usage", stats.usage)?;
        if let Some(h) = stats.carry {
            dict.set_item("h_last", out2(py, h))?;
        }
        Ok(dict)
    }

    /// The stored assignments of `indices` in table layer `layer` (a ModularMlp's layer; 0
    /// for a language model), `[n, k]`.
    #[pyo3(signature = (indices, layer = 0))]
    fn assignments<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        layer: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<u32>>> {
        let table = self.state.table();
        let layers = table.layers().len();
        if layer >= layers {
            return Err(Error::new(
                Kind::Config,
                format!(
                    "`layer` is {layer}; the table has {layers} layer(s), 0 to {}",
                    layers - 1
                ),
            )
            .into());
        }
        let (shape, keys) =
            crate::arrays::indices(indices, "indices", 1, table.examples(), "example indices")?;
        let s = table.selection(layer, &keys);
        Ok(out_shaped(py, &[shape[0], s.k()], s.as_slice().to_vec()))
    }
}
