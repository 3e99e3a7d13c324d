"""modula: modular neural networks trained by generalized EM, computed by modula's Rust
crates.

A modular layer holds a pool of M modules and evaluates K of them per input, chosen by a
learned controller; :class:`EM` trains the modules and the controllers together. The
classes own their parameters; arrays go in and out as numpy arrays (float32 values,
integer indices). docs/python.md in the repository describes the whole API.
"""

from modula import data
from modula._native import EM, Controller, LanguageModel, ModularLinear, ModularMlp
from modula.errors import (
    ArrayError,
    ConfigError,
    DataError,
    DivergedError,
    DTypeError,
    Error,
    InternalError,
    RunError,
)
from modula.run import Run, train

__all__ = [
    "ModularLinear",
    "Controller",
    "ModularMlp",
    "LanguageModel",
    "EM",
    "Run",
    "train",
    "data",
    "Error",
    "ConfigError",
    "DataError",
    "RunError",
    "ArrayError",
    "DTypeError",
    "DivergedError",
    "InternalError",
]
