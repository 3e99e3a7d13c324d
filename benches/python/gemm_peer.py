"""A BLAS peer for modula's GEMM benches, timed on request.

Usage: python3 gemm_peer.py PEER THREADS

PEER is `numpy` (numpy.matmul, OpenBLAS in the PyPI wheel) or `mkl` (Intel MKL: `cblas_sgemm`
of the PyPI `mkl` wheel through ctypes when it is installed, else PyTorch's CPU matmul, whose
PyPI wheel links MKL). The parent sets the BLAS thread variables to THREADS before starting
this process; torch is told again with `set_num_threads`.

The first line written is a JSON description of the peer, or `{"error": ...}` when it cannot
be used. Then every line read is a JSON request `{"op", "rows", "k", "n", "seconds"}` and the
answer is `{"seconds": s}`, the mean time of one call over a round of at least `seconds`. The
ops are those of `cargo xtask bench gemm` and `bench modular`, with `rows` the tall dimension:

- `nn`: C[rows x n] = A[rows x k] B[k x n] (a layer's forward)
- `tn`: C[k x n] = A^T B with A [rows x k], B [rows x n] (its weight gradient)
- `nt`: C[rows x k] = A B^T with A [rows x n], B [k x n] (its input gradient)
- `step`: the three of them on one layer, a dense forward and backward

Operands are allocated once per shape and outputs written in place, so a round times the
library call and Python's call overhead (a few microseconds, which the figures at one row
include).
"""

import ctypes
import glob
import json
import os
import sys
import time

import numpy as np


def numpy_peer(threads):
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = "%s %s" % (blas.get("name", "?"), blas.get("version", "?"))
    except Exception:
        blas = "unknown"
    about = {"peer": "numpy", "via": "numpy %s (%s)" % (np.__version__, blas)}

    def matmul(a, ta, b, tb, c):
        np.matmul(a.T if ta else a, b.T if tb else b, out=c)

    return about, lambda x: x, matmul


def cblas_library():
    """MKL's single dynamic library from the `mkl` wheel, or None."""
    roots = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "lib", "libmkl_rt.so*"))):
            try:
                return path, ctypes.CDLL(path)
            except OSError:
                continue
    return None


def mkl_peer(threads):
    found = cblas_library()
    if found is not None:
        path, lib = found
        version = ctypes.create_string_buffer(256)
        lib.mkl_get_version_string(version, 256)
        lib.mkl_set_num_threads(ctypes.byref(ctypes.c_int(threads)))
        sgemm = lib.cblas_sgemm
        f32p = ctypes.POINTER(ctypes.c_float)
        sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, f32p, ctypes.c_int, f32p,
                                               ctypes.c_int, ctypes.c_float, f32p, ctypes.c_int]
        sgemm.restype = None
        row_major, no_trans, trans = 101, 111, 112
        ptr = lambda x: x.ctypes.data_as(f32p)

        def matmul(a, ta, b, tb, c):
            m, n = c.shape
            k = a.shape[0] if ta else a.shape[1]
            sgemm(row_major, trans if ta else no_trans, trans if tb else no_trans, m, n, k,
                  1.0, ptr(a), a.shape[1], ptr(b), b.shape[1], 0.0, ptr(c), n)

        via = "%s (cblas_sgemm from %s)" % (version.value.decode().strip(), os.path.basename(path))
        return {"peer": "mkl", "via": via}, lambda x: x, matmul
    try:
        import torch
    except ImportError:
        raise RuntimeError("neither the `mkl` wheel nor torch is importable by %s" % sys.executable)
    if not torch.backends.mkl.is_available():
        raise RuntimeError("torch %s was built without MKL" % torch.__version__)
    torch.set_num_threads(threads)

    def matmul(a, ta, b, tb, c):
        torch.matmul(a.t() if ta else a, b.t() if tb else b, out=c)

    via = "torch %s (its MKL)" % torch.__version__
    return {"peer": "mkl", "via": via}, torch.from_numpy, matmul


def operands(op, rows, k, n, wrap, seed=0):
    """The call that one request times, on buffers of values in [-1, 1) (made by numpy and
    handed to the peer by `wrap`)."""
    rng = np.random.default_rng(seed)

    def filled(shape):
        return wrap(rng.uniform(-1, 1, shape).astype(np.float32))

    def empty(shape, dtype):
        return wrap(np.empty(shape, dtype))

    if op == "nn":
        a, b, c = filled((rows, k)), filled((k, n)), empty((rows, n), np.float32)
        return lambda mm: mm(a, False, b, False, c)
    if op == "tn":
        a, b, c = filled((rows, k)), filled((rows, n)), empty((k, n), np.float32)
        return lambda mm: mm(a, True, b, False, c)
    if op == "nt":
        a, b, c = filled((rows, n)), filled((k, n)), empty((rows, k), np.float32)
        return lambda mm: mm(a, False, b, True, c)
    if op == "step":
        x, dy, w = filled((rows, k)), filled((rows, n)), filled((k, n))
        y, dw, dx = (empty(s, np.float32) for s in [(rows, n), (k, n), (rows, k)])

        def step(mm):
            mm(x, False, w, False, y)
            mm(x, True, dy, False, dw)
            mm(dy, False, w, True, dx)

        return step
    raise ValueError("unknown op %r" % op)


def main():
    peer, threads = sys.argv[1], int(sys.argv[2])
    try:
        about, wrap, matmul = {"numpy": numpy_peer, "mkl": mkl_peer}[peer](threads)
    except Exception as why:
        print(json.dumps({"error": "%s: %s" % (peer, why)}), flush=True)
        return
    about["threads"] = threads
    print(json.dumps(about), flush=True)
    cached = None
    for line in sys.stdin:
        request = json.loads(line)
        key = (request["op"], request["rows"], request["k"], request["n"])
        if cached is None or cached[0] != key:
            cached = (key, operands(*key, wrap))
            cached[1](matmul)
        call = cached[1]
        iters, elapsed, batch = 0, 0.0, 1
        while elapsed < request["seconds"]:
            t0 = time.perf_counter()
            for _ in range(batch):
                call(matmul)
            elapsed += time.perf_counter() - t0
            iters += batch
            batch *= 2
        print(json.dumps({"seconds": elapsed / iters}), flush=True)


if __name__ == "__main__":
    main()
