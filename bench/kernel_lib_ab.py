"""A/B two builds of the kernel library on the same packed N:M weights, in one process.

Each build is loaded with ctypes from its own file (build the old one from a checkout, copy the
.so aside), both run the same sk_nm_matmul_bias calls in interleaved rounds of alternating order,
and their outputs are compared bitwise. Each library keeps its own thread pool, whose spinning
threads disturb the other's rounds: compare the minimums, read the medians with care.

    python bench/kernel_lib_ab.py old.so new.so --cases 128x3072x768x2x4,64x4096x4096x2x4 \
        [--threads 2] [--isa avx2] [--out result.json]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsec.bench import emit_json, machine_info  # noqa: E402
from sparsec.kernels import _native  # noqa: E402
from sparsec.kernels.isa import resolve_isa  # noqa: E402
from sparsec.kernels.packing_nm import PackedNM, pack_nm, prune_nm  # noqa: E402

_F32 = ctypes.POINTER(ctypes.c_float)
_U16 = ctypes.POINTER(ctypes.c_uint16)


def _call(lib: ctypes.CDLL, x: np.ndarray, p: PackedNM, bias: np.ndarray, isa: int, threads: int) -> np.ndarray:
    rows, k = x.shape
    y = np.empty((rows, p.cols), np.float32)
    status = lib.sk_nm_matmul_bias(
        x.ctypes.data_as(_F32), k, rows, k, p.cols, p.n, p.m, p.values.ctypes.data_as(_F32),
        p.values.size, p.meta.ctypes.data_as(_U16), p.meta.size, bias.ctypes.data_as(_F32),
        y.ctypes.data_as(_F32), p.cols, isa, threads,
    )
    if status != 0:
        raise RuntimeError(f"kernel status {status}")
    return y


def run_case(libs: dict[str, ctypes.CDLL], case: str, isa: int, threads: int, rounds: int) -> dict:
    rows, k, cols, n, m = (int(v) for v in case.split("x"))
    rng = np.random.default_rng(0)
    w = prune_nm(rng.standard_normal((k, cols)).astype(np.float32), n, m)
    packed = pack_nm(w, n, m)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    bias = rng.standard_normal(cols).astype(np.float32)
    ys = {name: _call(lib, x, packed, bias, isa, threads) for name, lib in libs.items()}
    ref = x @ w + bias
    errors = {name: float(np.abs(y - ref).max() / np.abs(ref).max()) for name, y in ys.items()}
    reps = max(3, int(2e8 / (rows * k * cols * n / m)))
    times: dict[str, list[float]] = {name: [] for name in libs}
    for r in range(rounds):
        for name in (list(libs) if r % 2 == 0 else list(libs)[::-1]):
            _call(libs[name], x, packed, bias, isa, threads)  # wakes this library's pool
            t0 = time.perf_counter()
            for _ in range(reps):
                _call(libs[name], x, packed, bias, isa, threads)
            times[name].append((time.perf_counter() - t0) / reps * 1e3)
    a, b = list(libs)
    return {
        "case": f"{rows}x{k}x{cols} {n}:{m}", "rows": rows, "k": k, "cols": cols, "pattern": f"{n}:{m}",
        **{f"{name}_ms_min": min(t) for name, t in times.items()},
        **{f"{name}_ms_median": float(np.median(t)) for name, t in times.items()},
        "speedup_of_min": min(times[a]) / min(times[b]),
        "bitwise_equal": bool(np.array_equal(ys[a], ys[b])), "max_rel_err_vs_numpy": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cases", required=True, help="comma-separated ROWSxKxNxnxm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    libs = {}
    for name, path in (("old", args.old), ("new", args.new)):
        lib = ctypes.CDLL(str(Path(path).resolve()))
        _native._declare(lib)
        libs[name] = lib
    isa = resolve_isa(args.isa)
    results = []
    for case in args.cases.split(","):
        r = run_case(libs, case, isa, args.threads, args.rounds)
        print(f"{r['case']}: min {r['old_ms_min']:.3f} -> {r['new_ms_min']:.3f} ms "
              f"({r['speedup_of_min']:.2f}x), bitwise equal: {r['bitwise_equal']}", file=sys.stderr)
        results.append(r)
    doc = {"machine": machine_info(), "threads": args.threads, "isa": args.isa or "widest",
           "load_average": os.getloadavg(), "results": results}
    emit_json(doc, args.out)


if __name__ == "__main__":
    main()
