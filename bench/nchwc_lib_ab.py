"""A/B two builds of the kernel library on the NCHWc sparse conv, in one process.

Each build is loaded with ctypes from its own file (copy the old .so aside before rebuilding),
both run the same sk_nchwc_conv calls in interleaved rounds of alternating order on 2:4 weights,
and their outputs are compared bitwise. Default cases: ResNet-50's conv shapes at batch 1.
Each library keeps its own thread pool: compare the minimums.

    python bench/nchwc_lib_ab.py old.so new.so [--cases 64x64x3x1x56,...] [--threads 2] [--out r.json]

A case is COUTxCINxKxSTRIDExH (square kernel and input, padding k // 2).
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
from sparsec.kernels.nchwc_conv import out_size  # noqa: E402
from sparsec.kernels.packing_nchwc import PackedNchwc, pack_nchwc  # noqa: E402
from sparsec.kernels.packing_nm import prune_nm  # noqa: E402

RESNET50 = (
    "64x64x1x1x56,64x64x3x1x56,256x64x1x1x56,64x256x1x1x56,128x256x1x1x56,128x128x3x2x56,"
    "512x256x1x2x56,512x128x1x1x28,128x512x1x1x28,128x128x3x1x28,256x512x1x1x28,256x256x3x2x28,"
    "1024x512x1x2x28,1024x256x1x1x14,256x1024x1x1x14,256x256x3x1x14,512x1024x1x1x14,"
    "512x512x3x2x14,2048x1024x1x2x14,2048x512x1x1x7,512x2048x1x1x7,512x512x3x1x7"
)

_F32 = ctypes.POINTER(ctypes.c_float)
_I32 = ctypes.POINTER(ctypes.c_int32)
_I64, _INT, _FLT = ctypes.c_int64, ctypes.c_int, ctypes.c_float


def _declare(lib: ctypes.CDLL) -> None:
    lib.sk_nchwc_conv.argtypes = [_F32, _I64, _I64, _I64, _I64, _I64, _I64, _I64] + [_INT] * 10 + [
        _I64, _I32, _I32, _F32, _F32, _F32, _INT, _FLT, _FLT, _F32, _INT, _INT]
    lib.sk_nchwc_conv.restype = _INT


def _call(lib: ctypes.CDLL, x: np.ndarray, p: PackedNchwc, stride: int, pad: int, y: np.ndarray,
          bias: np.ndarray, threads: int) -> None:
    _, _, h, w, _ = x.shape
    status = lib.sk_nchwc_conv(
        x.ctypes.data_as(_F32), x.shape[0], p.ib, h, w, p.ob, y.shape[2], y.shape[3], p.kh, p.kw, stride, stride,
        pad, pad, pad, pad, 1, 1, p.k, p.offs.ctypes.data_as(_I32), p.idx.ctypes.data_as(_I32), p.vals.ctypes.data_as(_F32),
        bias.ctypes.data_as(_F32), None, 1, 0.0, 0.0, y.ctypes.data_as(_F32), 2, threads)
    if status != 0:
        raise RuntimeError(f"kernel status {status}")


def run_case(libs: dict[str, ctypes.CDLL], case: str, threads: int, rounds: int) -> dict:
    cout, cin, k, stride, h = (int(v) for v in case.split("x"))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    w = prune_nm(w.transpose(0, 2, 3, 1).reshape(-1, cin).T, 2, 4).T.reshape(cout, k, k, cin).transpose(0, 3, 1, 2)
    packed = pack_nchwc(np.ascontiguousarray(w))
    x = rng.standard_normal((1, packed.ib, h, h, 16)).astype(np.float32)
    pad = k // 2
    ho = out_size(h, k, stride, 1, pad, pad)
    bias = rng.standard_normal(packed.ob * 16).astype(np.float32)
    ys = {}
    for name, lib in libs.items():
        ys[name] = np.empty((1, packed.ob, ho, ho, 16), np.float32)
        _call(lib, x, packed, stride, pad, ys[name], bias, threads)
    macs = cout * cin * k * k * ho * ho
    reps = max(3, int(3e8 / macs))
    times: dict[str, list[float]] = {name: [] for name in libs}
    for r in range(rounds):
        for name in (list(libs) if r % 2 == 0 else list(libs)[::-1]):
            y = ys[name]
            _call(libs[name], x, packed, stride, pad, y, bias, threads)
            t0 = time.perf_counter()
            for _ in range(reps):
                _call(libs[name], x, packed, stride, pad, y, bias, threads)
            times[name].append((time.perf_counter() - t0) / reps * 1e3)
    a, b = list(libs)
    return {
        "case": case, "macs_dense": macs,
        **{f"{name}_ms_min": min(t) for name, t in times.items()},
        **{f"{name}_ms_median": float(np.median(t)) for name, t in times.items()},
        "speedup_of_min": min(times[a]) / min(times[b]),
        "bitwise_equal": bool(np.array_equal(ys[a], ys[b])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cases", default=RESNET50, help="comma-separated COUTxCINxKxSTRIDExH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    libs = {}
    for name, path in (("old", args.old), ("new", args.new)):
        lib = ctypes.CDLL(str(Path(path).resolve()))
        _declare(lib)
        libs[name] = lib
    load_start = os.getloadavg()
    results = []
    for case in args.cases.split(","):
        r = run_case(libs, case, args.threads, args.rounds)
        print(f"{r['case']}: min {r['old_ms_min']:.3f} -> {r['new_ms_min']:.3f} ms "
              f"({r['speedup_of_min']:.2f}x), bitwise equal: {r['bitwise_equal']}", file=sys.stderr)
        results.append(r)
    total = {name: sum(r[f"{name}_ms_min"] for r in results) for name in libs}
    print(f"sum of mins: old {total['old']:.2f} ms, new {total['new']:.2f} ms", file=sys.stderr)
    doc = {"benchmark": "nchwc_lib_ab", "machine": machine_info(), "threads": args.threads,
           "load_average_start": load_start, "load_average_end": os.getloadavg(),
           "sum_ms_min": total, "results": results}
    emit_json(doc, args.out)


if __name__ == "__main__":
    main()
