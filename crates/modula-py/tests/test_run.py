"""Training into run directories, and reading the ones the command line writes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import modula

# A toy run short enough for the suite: a few hundred steps, logging and checkpointing often.
TOY = {
    "seed": 3,
    "threads": 1,
    "model": {"modules": 4, "k": 1},
    "train": {"steps": 400, "log_every": 50, "checkpoint_every": 100},
}

TOY_TOML = """seed = 3
threads = 1

[model]
modules = 4
k = 1

[train]
steps = 400
log_every = 50
checkpoint_every = 100
"""


def wall_clock_free(record):
    """A summary or metrics record without the fields that measure wall-clock time."""
    return {
        k: v for k, v in record.items() if k != "seconds" and not k.endswith("_per_s")
    }


def cli():
    """The `modula` binary: $MODULA_CLI (set by `cargo xtask ci`), else the workspace's
    debug or release build."""
    root = Path(__file__).resolve().parents[3]
    candidates = [os.environ.get("MODULA_CLI")] + [
        str(root / "target" / p / "modula") for p in ("release", "debug")
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    if os.environ.get("CI") == "true":
        pytest.fail("the modula binary is missing; build it with `cargo build -p modula-cli`")
    pytest.skip("the modula binary is not built (cargo build -p modula-cli)")


def test_train_reproduces_the_command_line_exactly(tmp_path):
    binary = cli()
    run = modula.train(TOY, out=tmp_path / "py", progress=False)
    config = tmp_path / "toy.toml"
    config.write_text(TOY_TOML)
    subprocess.run(
        [binary, "train", "--config", str(config), "--out", str(tmp_path / "cli")],
        check=True,
        capture_output=True,
    )
    by_cli = modula.Run.open(tmp_path / "cli")
    assert by_cli.config == run.config
    assert wall_clock_free(by_cli.summary) == wall_clock_free(run.summary)
    assert [wall_clock_free(r) for r in _records(by_cli)] == [
        wall_clock_free(r) for r in _records(run)
    ]
    assert by_cli.checkpoint_path.read_bytes() != b""


def _records(run):
    metrics = run.metrics
    return metrics.to_dict("records") if hasattr(metrics, "to_dict") else metrics


def test_a_run_reads_back_and_evaluates_as_its_summary(tmp_path):
    run = modula.train(TOY, out=tmp_path / "run", progress=False, steps=200)
    assert run.summary["steps"] == 200
    assert run.config["train"]["steps"] == 200
    assert run.checkpoint_path.is_file()
    records = _records(run)
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    evaluation = run.evaluate()
    for key in ("test_loss", "test_nll", "purity", "effective_modules", "usage"):
        assert evaluation[key] == run.summary[key], key
    # Continued to more steps, the run picks up from its checkpoint.
    resumed = modula.train(resume=tmp_path / "run", steps=300, progress=False)
    assert resumed.summary["steps"] == 300


def test_train_from_a_file_with_overrides(tmp_path):
    config = tmp_path / "toy.toml"
    config.write_text(TOY_TOML)
    run = modula.train(config, out=tmp_path / "run", progress=False, steps=50, algo="uniform")
    assert run.summary["algo"] == "uniform" and run.summary["steps"] == 50


@pytest.mark.parametrize("config,match", [
    ("missing.toml", "missing.toml"),
    ({"model": {"modules": 0}}, "model.modules"),
    ({"modell": {}}, "modell"),
    ({"task_name": "chess"}, "task_name"),
    ({"backend": "wgpu"}, "CPU backend"),
])
def test_bad_configs_raise_config_errors(tmp_path, config, match):
    if isinstance(config, str):
        config = tmp_path / config
    with pytest.raises(modula.ConfigError, match=match):
        modula.train(config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_corrupt_config_file_raises_a_config_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model\nmodules = 3\n")
    with pytest.raises(modula.ConfigError, match="bad.toml"):
        modula.train(config, out=tmp_path / "run")
    with pytest.raises(modula.ConfigError, match="algo"):
        modula.train(TOY, out=tmp_path / "run", algo="annealing")


def test_run_directories_refuse_misuse(tmp_path):
    with pytest.raises(modula.RunError, match="no run"):
        modula.Run.open(tmp_path)
    with pytest.raises(modula.RunError, match="does not exist"):
        modula.Run.open(tmp_path / "nowhere")
    modula.train(TOY, out=tmp_path / "run", progress=False, steps=10)
    with pytest.raises(modula.RunError, match="already holds a run"):
        modula.train(TOY, out=tmp_path / "run", progress=False, steps=10)
    os.remove(tmp_path / "run" / "checkpoint.safetensors")
    with pytest.raises(modula.RunError, match="checkpoint"):
        modula.Run.open(tmp_path / "run").evaluate()


def test_ctrl_c_stops_training_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    # Far more steps than the interrupt lets run; SIGINT arrives while training.
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="checkpoint is saved"):
            modula.train(TOY, out=out, progress=False, steps=10_000_000)
    finally:
        timer.cancel()
    run = modula.Run.open(out)
    assert run.summary is None
    # The evaluation reads the checkpoint, which holds the step the run stopped at.
    stopped = run.evaluate()["steps"]
    resumed = modula.train(resume=out, progress=False, steps=stopped + 20)
    assert resumed.summary["steps"] == stopped + 20


def test_training_releases_the_gil(tmp_path):
    done = threading.Event()
    ticks = 0

    def work():
        try:
            modula.train(TOY, out=tmp_path / "run", progress=False, steps=2000)
        finally:
            done.set()

    worker = threading.Thread(target=work)
    worker.start()
    # With the GIL held for the whole call this thread would not run until it ended.
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert ticks > 10


def test_load_text_and_refuse_missing_or_corrupt_data(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\nthe dog sat\n" * 50)
    loaded = modula.data.load(corpus)
    assert loaded["format"] == "text"
    for split in ("train", "valid", "test"):
        assert loaded[split].dtype == np.uint32 and loaded[split].ndim == 1
        assert loaded[split].max() < len(loaded["vocab"])
    with pytest.raises(modula.DataError, match="not found"):
        modula.data.load(tmp_path / "absent.txt")
    with pytest.raises(modula.DataError, match="modula data fetch ptb"):
        modula.data.load("ptb", data_dir=tmp_path)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    with pytest.raises(modula.DataError, match="bad.idx"):
        modula.data.load(bad)
    with pytest.raises(modula.ConfigError, match="format"):
        modula.data.load(corpus, format="parquet")


def test_load_fetched_data_sets():
    if not Path("data/ptb").exists() and not os.environ.get("MODULA_DATA"):
        if os.environ.get("CI") == "true":
            pytest.fail("data/ptb is missing; run `modula data fetch ptb`")
        pytest.skip("Penn Treebank is not fetched (modula data fetch ptb)")
    ptb = modula.data.load("ptb")
    assert len(ptb["vocab"]) == 10000
    assert ptb["train"].size > ptb["valid"].size > 0


def test_the_example_runs_without_matplotlib(tmp_path):
    example = Path(__file__).resolve().parents[3] / "examples" / "python" / "toy_em.py"
    env = dict(os.environ, MODULA_EXAMPLE_STEPS="300")
    result = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in result.stdout
    else:
        assert (tmp_path / "toy_em.png").is_file()


@pytest.fixture(autouse=True)
def _at_the_root(monkeypatch):
    """Runs each test from the repository root, where `modula data fetch` puts data/."""
    monkeypatch.chdir(Path(__file__).resolve().parents[3])
