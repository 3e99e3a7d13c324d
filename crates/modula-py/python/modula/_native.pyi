"""Type stubs of the extension module (the Rust half of the package)."""

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Indices = npt.NDArray[np.integer[Any]]

class ModularLinear:
    """A layer of ``modules`` linear modules ``x W_m + b_m``; each row runs through the ``k``
    modules its selection names and their outputs are summed."""

    def __init__(self, d_in: int, d_out: int, modules: int, k: int, seed: int = 0) -> None: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def modules(self) -> int: ...
    @property
    def k(self) -> int: ...
    def forward(self, x: Floats, selection: Indices) -> Floats:
        """``y[i] = sum over the distinct modules m of selection[i] of x[i] W_m + b_m``;
        ``x`` is float32 ``[n, d_in]``, ``selection`` integers ``[n, k]``."""
    def backward(self, dy: Floats) -> Floats:
        """Backward of the last ``forward``: adds into ``weight_grad`` and ``bias_grad`` and
        returns ``dL/dx``."""
    def zero_grad(self) -> None: ...
    @property
    def weight(self) -> Floats:
        """``[modules, d_in, d_out]`` (a copy; assign an array of that shape to set it)."""
    @weight.setter
    def weight(self, value: Floats) -> None: ...
    @property
    def bias(self) -> Floats:
        """``[modules, d_out]`` (a copy; assign to set it)."""
    @bias.setter
    def bias(self, value: Floats) -> None: ...
    @property
    def weight_grad(self) -> Floats: ...
    @property
    def bias_grad(self) -> Floats: ...
    def _time_forward(self, x: Floats, selection: Indices, repeats: int) -> List[float]: ...

class Controller:
    """``k`` categorical distributions over ``modules`` modules per input row."""

    def __init__(self, d_in: int, modules: int, k: int, seed: int = 0) -> None: ...
    @property
    def modules(self) -> int: ...
    @property
    def k(self) -> int: ...
    def log_probs(self, x: Floats) -> Floats:
        """Per-slot log-probabilities, ``[n, k, modules]``."""
    def sample(self, x: Floats) -> npt.NDArray[np.uint32]:
        """One selection ``[n, k]`` per row, drawn from the controller's seeded stream."""
    def greedy(self, x: Floats) -> npt.NDArray[np.uint32]:
        """The most probable module of each slot, ``[n, k]``."""
    def log_prob(self, x: Floats, selection: Indices) -> Floats:
        """``log p(selection[i] | x[i])`` per row, ``[n]``."""
    @property
    def weight(self) -> Floats: ...
    @weight.setter
    def weight(self, value: Floats) -> None: ...
    @property
    def bias(self) -> Floats: ...
    @bias.setter
    def bias(self, value: Floats) -> None: ...

class ModularMlp:
    """Stacked modular linear layers (ReLU between them), each routed by its controller."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        modules: int = 6,
        k: int = 1,
        layers: int = 1,
        hidden: int = 16,
        variance: float = 0.01,
        seed: int = 0,
    ) -> None: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def layer_shapes(self) -> List[Tuple[int, int]]: ...
    def predict(self, x: Floats) -> Floats:
        """Outputs ``[n, d_out]`` under greedy routes."""
    def nll(self, x: Floats, y: npt.NDArray[Any]) -> Floats:
        """``-log p(y | x, greedy routes)`` per row; float32 ``y [n, d_out]`` for regression,
        integer ``y [n]`` for classes."""
    def parameters(self) -> Dict[str, Floats]: ...

class LanguageModel:
    """Embedding, modular GRU cell routed by a controller, softmax over the vocabulary."""

    def __init__(self, vocab: int, seed: int = 0, **model: Any) -> None: ...
    @property
    def vocab(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    def nll(
        self, ids: Indices, targets: Indices, h0: Optional[Floats] = None
    ) -> Tuple[Floats, Floats]:
        """``(nll [T, n], h_last [n, hidden])`` of a window under greedy routes."""
    def parameters(self) -> Dict[str, Floats]: ...

class EM:
    """Generalized (Viterbi) EM for a ModularMlp or a LanguageModel."""

    def __init__(
        self,
        model: Any,
        examples: Optional[int] = None,
        samples: int = 10,
        lr: float = 0.01,
        grad_clip: float = 0.0,
        ctrl_weight: float = 1.0,
        seed: int = 0,
    ) -> None: ...
    @property
    def examples(self) -> int: ...
    @property
    def steps(self) -> int: ...
    def e_step(self, batch: Tuple[Any, ...], indices: Indices) -> Dict[str, float]: ...
    def m_step(self, batch: Tuple[Any, ...], indices: Indices) -> Dict[str, Any]: ...
    def assignments(self, indices: Indices, layer: int = 0) -> npt.NDArray[np.uint32]: ...

def train(
    config_path: Optional[str] = None,
    config_json: Optional[str] = None,
    out: Optional[str] = None,
    resume: Optional[str] = None,
    progress: bool = True,
    steps: Optional[int] = None,
    epochs: Optional[int] = None,
    max_minutes: Optional[float] = None,
    seed: Optional[int] = None,
    algo: Optional[str] = None,
    threads: Optional[int] = None,
) -> str: ...
def evaluate(dir: str) -> str: ...
def read_config(dir: str) -> str: ...
def load(
    target: str, format: Optional[str] = None, data_dir: Optional[str] = None
) -> Dict[str, Any]: ...
