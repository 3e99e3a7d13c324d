"""The Python bindings' overhead: `ModularLinear.forward` on a [512 x 512] batch called from
Python, against the same forward pass timed inside Rust (`_time_forward`, which runs the
routing and the layer's forward on already-converted arguments, so no Python is in its
loop). The difference is what the bindings add: checking and copying the input into the
backend's tensor, converting the selection, releasing the GIL, and handing the output to
numpy.

Both are timed in the same process on the same layer and data, in alternating rounds, so
that the machine's drift (a shared 2-core machine) falls on both alike. It reports the
median of the rounds' ratios (each round's median call against the other's) and the ratio
of the fastest calls, the figure least disturbed by other processes. Run it after
`cargo xtask ci` (or `cargo xtask wheel` and `pip install --target target/python-test`):
`PYTHONPATH=target/python-test python3 benches/python/overhead.py`.
"""

import json
import os
import sys
import time

import numpy as np

import modula

ROWS, D_IN, D_OUT, MODULES, K = 512, 512, 512, 4, 1
ROUNDS, CALLS = 15, 20


def python_calls(layer, x, selection):
    times = []
    for _ in range(CALLS):
        t = time.perf_counter()
        layer.forward(x, selection)
        times.append(time.perf_counter() - t)
    return times


def main():
    rng = np.random.default_rng(0)
    layer = modula.ModularLinear(D_IN, D_OUT, MODULES, K, seed=0)
    x = rng.normal(size=(ROWS, D_IN)).astype(np.float32)
    selection = rng.integers(0, MODULES, size=(ROWS, K))
    # Warm-up: the thread pool's start and the first buffers' page faults.
    python_calls(layer, x, selection)
    layer._time_forward(x, selection, CALLS)
    py, rs = [], []
    for _ in range(ROUNDS):
        py.append(python_calls(layer, x, selection))
        rs.append(layer._time_forward(x, selection, CALLS))
    ratios = sorted(np.median(p) / np.median(r) for p, r in zip(py, rs))
    fastest = min(map(min, py)) / min(map(min, rs))
    result = {
        "bench": f"ModularLinear.forward [{ROWS} x {D_IN}] -> {D_OUT}, M = {MODULES}, K = {K}",
        "python_ms": 1e3 * float(np.median(py)),
        "rust_ms": 1e3 * float(np.median(rs)),
        "overhead_median_round": float(np.median(ratios)) - 1.0,
        "overhead_rounds_range": [ratios[0] - 1.0, ratios[-1] - 1.0],
        "overhead_fastest_calls": fastest - 1.0,
        "rounds": ROUNDS,
        "calls_per_round": CALLS,
        "nproc": os.cpu_count(),
        "loadavg_at_start": LOAD_AT_START,
        "loadavg_at_end": os.getloadavg()[0],
        "python": sys.version.split()[0],
    }
    print(f"python {result['python_ms']:.3f} ms, rust {result['rust_ms']:.3f} ms per call "
          f"(medians): overhead {100 * result['overhead_median_round']:+.1f}% (median round; "
          f"rounds {100 * ratios[0] - 100:+.1f}% to {100 * ratios[-1] - 100:+.1f}%), "
          f"{100 * result['overhead_fastest_calls']:+.1f}% between the fastest calls; "
          f"load average {LOAD_AT_START:.2f} at the start on {os.cpu_count()} cores")
    print(json.dumps(result))


LOAD_AT_START = os.getloadavg()[0]

if __name__ == "__main__":
    main()
