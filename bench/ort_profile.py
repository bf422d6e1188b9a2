"""Where an ONNX model's time goes in ONNX Runtime: per op type and, for the matrix products
(Gemm, MatMul, NMSparseMatMul), per input shape, from ORT's own profiler. Prints JSON.

    .venv/bin/python bench/ort_profile.py dense.onnx
    .venv/bin/python bench/ort_profile.py ARTIFACT/model.onnx --library ARTIFACT/libsparsec_kernels.so

With `--library` the session is built as the compiled model runs (sparsec's custom ops, the
kernel threads capped at the session's, ORT spinning on). Inputs: random values of each input's
type, dynamic dims 1. ORT's profiler adds a little per node: compare models with the same tool.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np
import onnxruntime as ort

from sparsec.bench import emit_json, machine_info, profile_node_events

PRODUCTS = ("Gemm", "MatMul", "FusedMatMul", "NMSparseMatMul")


def _feeds(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 1000, shape).astype(np.int64 if "int64" in i.type else np.int32)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--library", default=None, help="sparsec kernel op library (an artifact's own copy)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args(argv)
    if args.library:
        from sparsec.backends.ort.sparse_ops import session_options

        opts = session_options(args.threads, args.threads, True, args.library)
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
    events, runs = profile_node_events(args.model, opts, _feeds, args.runs)
    by_op: dict[str, float] = collections.defaultdict(float)
    by_shape: dict[str, float] = collections.defaultdict(float)
    for e in events:
        by_op[e["op"]] += e["ms"]
        if e["op"] in PRODUCTS:
            shapes = [next(iter(t.values())) for t in e["args"].get("input_type_shape", [])]
            by_shape[f"{e['op']} {shapes}"] += e["ms"]

    def per_run_ms(table: dict[str, float]) -> dict[str, float]:
        return {k: round(v / runs, 3) for k, v in sorted(table.items(), key=lambda kv: -kv[1])}

    result = {
        "command": "python bench/ort_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(), "loadavg": [round(x, 2) for x in os.getloadavg()], "runs": runs,
        "node_ms_per_run": round(sum(by_op.values()) / runs, 3),
        "by_op_ms": per_run_ms(by_op), "products_by_input_shapes_ms": per_run_ms(by_shape),
    }
    emit_json(result, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
