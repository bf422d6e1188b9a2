"""Per-call overhead of the sparse custom ops inside an ONNX Runtime session.

A graph of L independent 2:4 NMSparseMatMul layers at batch 1 runs (a) as a session with the
native custom ops (backends/ort/sparse_ops.py), (b) as the kernels called directly from
Python (ctypes, one thread), (c) as dense ORT MatMuls; optionally (d) through the old
onnxruntime-extensions PyOp path, given the old module's file:

    git show 9187cae~1:backends/ort/sparse_ops.py > /tmp/old_sparse_ops.py
    .venv/bin/python bench/ort_op_overhead.py --pyop-module /tmp/old_sparse_ops.py

Each variant is timed in 3 interleaved rounds of 300 runs (median of medians, microseconds);
every output is checked against the dense product first. Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = ((768, 3072, 8), (3072, 768, 8), (256, 256, 8))  # (K, N, layers)


def bench(f: Callable[[], object], reps: int = 300) -> float:
    for _ in range(30):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def layers_model(mod: ModuleType, domain: str, ws: list[np.ndarray], k: int) -> onnx.ModelProto:
    nodes, inits = [], []
    for i, w in enumerate(ws):
        node, its = mod.nm_matmul_node("x", f"y{i}", w, 2, 4, f"l{i}")
        nodes.append(node)
        inits += its
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(ws))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(domain, 1)])


def dense_session(ws: list[np.ndarray], k: int) -> ort.InferenceSession:
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(len(ws))]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(ws))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)]
    graph = helper.make_graph(nodes, "d", [x], outs, inits)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure(k: int, n: int, nl: int, native: ModuleType, old: ModuleType | None,
            rng: np.random.Generator) -> dict[str, object]:
    from sparsec.kernels import nm_matmul, pack_nm, prune_nm

    ws = [prune_nm(rng.standard_normal((k, n)).astype(np.float32), 2, 4) for _ in range(nl)]
    x = rng.standard_normal((1, k)).astype(np.float32)
    ref = [x @ w for w in ws]
    packed = [pack_nm(w, 2, 4) for w in ws]
    feeds = {"x": x}
    ds = dense_session(ws, k)
    s_new = native.make_session(layers_model(native, native.KERNEL_DOMAIN, ws, k), threads=2,
                                kernel_threads=1)
    variants: dict[str, Callable[[], object]] = {
        "dense_ort": lambda: ds.run(None, feeds),
        "native_ops": lambda: s_new.run(None, feeds),
    }
    if old is not None:
        s_old = old.make_session(layers_model(old, old.PYOP_DOMAIN, ws, k), threads=2,
                                 kernel_threads=1)
        variants["pyops"] = lambda: s_old.run(None, feeds)
    variants["direct_ctypes"] = lambda: [nm_matmul(x, p, threads=1) for p in packed]
    for name, f in variants.items():
        outs = f()
        assert all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(outs, ref, strict=True)), name
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):  # interleaved, so drift in machine load hits every variant alike
        for name, f in variants.items():
            rounds[name].append(bench(f))
    us = {name: float(np.median(v)) for name, v in rounds.items()}
    row: dict[str, object] = {"K": k, "N": n, "layers": nl}
    row.update({f"{name}_us": round(v, 1) for name, v in us.items()})
    row["native_per_layer_us"] = round(us["native_ops"] / nl, 1)
    row["native_minus_direct_per_call_us"] = round((us["native_ops"] - us["direct_ctypes"]) / nl, 1)
    if "pyops" in us:
        row["pyops_per_layer_us"] = round(us["pyops"] / nl, 1)
        row["pyops_minus_native_per_call_us"] = round((us["pyops"] - us["native_ops"]) / nl, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyop-module", help="old backends/ort/sparse_ops.py (PyOp path) to compare")
    args = parser.parse_args()

    from sparsec.backends.ort import sparse_ops as native

    old = None
    if args.pyop_module:
        spec = importlib.util.spec_from_file_location("old_sparse_ops", args.pyop_module)
        assert spec and spec.loader
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    rng = np.random.default_rng(0)
    results = []
    for k, n, nl in SHAPES:
        results.append(measure(k, n, nl, native, old, rng))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"onnxruntime": ort.__version__, "threads": 2, "kernel_threads": 1,
                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
