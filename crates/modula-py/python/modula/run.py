"""Training into run directories and reading them: the same directories, files and
resume behaviour as the ``modula`` command line (``modula train``, ``modula eval``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from modula import _native
from modula.errors import ConfigError, RunError

__all__ = ["Run", "train"]

PathLike = Union[str, "os.PathLike[str]"]


class Run:
    """A run directory written by :func:`train` or by ``modula train``.

    Open one with :meth:`Run.open`. Its files are read when asked for, so a run that is
    still training shows its latest records.
    """

    def __init__(self, path: Path, config: Dict[str, Any]) -> None:
        #: The run directory.
        self.path = path
        #: The resolved configuration (``config.toml``) as a dict.
        self.config = config

    @classmethod
    def open(cls, path: PathLike) -> "Run":
        """Opens the run in ``path``; raises :class:`modula.RunError` when the directory
        holds no run, :class:`modula.ConfigError` when its ``config.toml`` is unusable."""
        path = Path(path)
        return cls(path, json.loads(_native.read_config(os.fspath(path))))

    @property
    def checkpoint_path(self) -> Path:
        """The run's latest checkpoint (``checkpoint.safetensors``)."""
        return self.path / "checkpoint.safetensors"

    @property
    def metrics(self) -> Any:
        """The records of ``metrics.jsonl``: a pandas DataFrame when pandas is importable,
        else a list of dicts."""
        records = _read_jsonl(self.path / "metrics.jsonl")
        try:
            import pandas
        except ImportError:
            return records
        return pandas.DataFrame.from_records(records)

    @property
    def summary(self) -> Optional[Dict[str, Any]]:
        """``summary.json`` as a dict, or None before the run's first end."""
        path = self.path / "summary.json"
        if not path.exists():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def evaluate(self) -> Dict[str, Any]:
        """Evaluates the checkpoint greedily on the held-out splits, as ``modula eval
        --json`` does."""
        return json.loads(_native.evaluate(os.fspath(self.path)))

    def __repr__(self) -> str:
        return f"Run({os.fspath(self.path)!r})"


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        # The last line of a run killed while appending may be cut short; the run's own
        # resume drops it too.
        records = []
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records


def train(
    config: Union[None, PathLike, Mapping[str, Any]] = None,
    out: Optional[PathLike] = None,
    progress: bool = True,
    *,
    resume: Optional[PathLike] = None,
    steps: Optional[int] = None,
    epochs: Optional[int] = None,
    max_minutes: Optional[float] = None,
    seed: Optional[int] = None,
    algo: Optional[str] = None,
    threads: Optional[int] = None,
) -> Run:
    """Trains a run as ``modula train`` does and returns it.

    ``config`` is a TOML file's path, or a dict of the same keys (``task_name``, ``seed``,
    ``threads``, sections ``task``, ``model`` and ``train``; see docs/cli.md), or None for
    the toy task's defaults. ``out`` is the run directory (by default
    ``runs/NAME-SEED-TIMESTAMP``); ``resume`` continues the run in a directory instead.
    The keyword arguments override the configuration as the command line's flags do.
    ``progress=False`` trains silently.

    The GIL is released while training. Ctrl-C stops the run after writing its checkpoint
    and raises ``KeyboardInterrupt``; ``train(resume=...)`` continues it.
    """
    config_path = config_json = None
    if resume is not None and (config is not None or out is not None):
        raise ConfigError("`resume` continues an existing run; leave `config` and `out` out")
    if isinstance(config, Mapping):
        try:
            config_json = json.dumps(config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config dict: {e}; use str, int, float, bool, lists and dicts") from None
    elif config is not None:
        config_path = os.fspath(config)
    path = _native.train(
        config_path=config_path,
        config_json=config_json,
        out=None if out is None else os.fspath(out),
        resume=None if resume is None else os.fspath(resume),
        progress=progress,
        steps=steps,
        epochs=epochs,
        max_minutes=max_minutes,
        seed=seed,
        algo=algo,
        threads=threads,
    )
    return Run.open(path)
