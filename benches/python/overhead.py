"""The Python bindings' overhead: `ModularLinear.forward` on a [512 x 512] batch called from
Python, against the same forward pass timed inside Rust (`_time_forward`, which runs the
routing and the layer's forward on already-converted arguments, so no Python is in its
loop). The difference is what the bindings add: checking and copying the input into the
backend's tensor, converting the selection, releasing the GIL, and handing the output to
numpy.

Both are timed in the same process on the same layer and data, one Python call and one
Rust call after the other, so that the machine's drift (a shared 2-core machine) falls on
both alike: the overhead is the median of the pairs' ratios. The median calls and the
ratio of the fastest calls are reported beside it. Run it after `cargo xtask ci` (or
`cargo xtask wheel` and `pip install --target target/python-test`):
`PYTHONPATH=target/python-test python3 benches/python/overhead.py`.
"""

import json
import os
import sys
import time

import numpy as np

import modula

ROWS, D_IN, D_OUT, MODULES, K = 512, 512, 512, 4, 1
PAIRS = 300


def main():
    rng = np.random.default_rng(0)
    layer = modula.ModularLinear(D_IN, D_OUT, MODULES, K, seed=0)
    x = rng.normal(size=(ROWS, D_IN)).astype(np.float32)
    selection = rng.integers(0, MODULES, size=(ROWS, K))
    # Warm-up: the thread pool's start and the first buffers' page faults.
    for _ in range(20):
        layer.forward(x, selection)
    layer._time_forward(x, selection, 20)
    py, rs = [], []
    for _ in range(PAIRS):
        t = time.perf_counter()
        layer.forward(x, selection)
        py.append(time.perf_counter() - t)
        rs.extend(layer._time_forward(x, selection, 1))
    ratios = np.array(py) / np.array(rs)
    result = {
        "bench": f"ModularLinear.forward [{ROWS} x {D_IN}] -> {D_OUT}, M = {MODULES}, K = {K}",
        "python_ms": 1e3 * float(np.median(py)),
        "rust_ms": 1e3 * float(np.median(rs)),
        "overhead": float(np.median(ratios)) - 1.0,
        "overhead_quartiles": [float(np.quantile(ratios, q)) - 1.0 for q in (0.25, 0.75)],
        "overhead_fastest_calls": min(py) / min(rs) - 1.0,
        "pairs": PAIRS,
        "nproc": os.cpu_count(),
        "loadavg_at_start": LOAD_AT_START,
        "loadavg_at_end": os.getloadavg()[0],
        "python": sys.version.split()[0],
    }
    q1, q3 = result["overhead_quartiles"]
    print(f"python {result['python_ms']:.3f} ms, rust {result['rust_ms']:.3f} ms per call "
          f"(medians): overhead {100 * result['overhead']:+.1f}% (median of {PAIRS} paired "
          f"calls; quartiles {100 * q1:+.1f}% and {100 * q3:+.1f}%), "
          f"{100 * result['overhead_fastest_calls']:+.1f}% between the fastest calls; "
          f"load average {LOAD_AT_START:.2f} at the start on {os.cpu_count()} cores")
    print(json.dumps(result))


LOAD_AT_START = os.getloadavg()[0]

if __name__ == "__main__":
    main()
