#![doc = include_str!("../README.md")]

mod arrays;
mod data;
mod em;
mod error;
mod layers;
mod models;
mod run;

use std::sync::OnceLock;

use modula_cpu::Cpu;
use pyo3::prelude::*;

/// The CPU backend every object of the process shares: one team with a thread per core,
/// started on first use (a backend per object would start a team per layer).
fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(Cpu::new).clone()
}

/// The extension module `modula._native`; the Python package `modula` re-exports it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<layers::PyModularLinear>()?;
    m.add_class::<layers::PyController>()?;
    m.add_class::<models::PyModularMlp>()?;
    m.add_class::<models::PyLanguageModel>()?;
    m.add_class::<em::PyEm>()?;
    m.add_function(wrap_pyfunction!(run::train, m)?)?;
    m.add_function(wrap_pyfunction!(run::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(run::read_config, m)?)?;
    m.add_function(wrap_pyfunction!(data::load, m)?)?;
    Ok(())
}
