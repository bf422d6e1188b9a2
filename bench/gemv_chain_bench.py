"""Batch-1 GEMV chain: thread-pool wake cost between back-to-back kernel calls.

A chain of `--layers` 2:4 GEMVs, 768x3072 and 3072x768 alternating (GPT-2 MLP shapes, 75 MB
of dense weights: DRAM-resident), called back to back from Python with 1 and 2 kernel
threads, against one dense ONNX Runtime session of the same chained MatMuls (2 threads).
Prints JSON; median of >= 200 chains per round, best round of 3 (interleaved).

    flock /tmp/sparsec-cpu.lock .venv/bin/python bench/gemv_chain_bench.py
    SPARSEC_POOL_SPIN_US=0 ... # workers block at once (the pool before spinning)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import sparsec.kernels as sk

    rng = np.random.default_rng(0)
    shapes = [(768, 3072) if i % 2 == 0 else (3072, 768) for i in range(args.layers)]
    ws = [sk.prune_nm(rng.standard_normal(s).astype(np.float32) / np.sqrt(s[0]), 2, 4)
          for s in shapes]
    packs = [sk.pack_nm(w, 2, 4) for w in ws]
    nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"])
             for i in range(args.layers)]
    last = shapes[-1][1]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 768])],
        [helper.make_tensor_value_info(f"h{args.layers}", TensorProto.FLOAT, [1, last])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 768)).astype(np.float32)

    def chain(threads: int) -> np.ndarray:
        h = x
        for p in packs:
            h = sk.nm_matmul(h, p, threads=threads)
        return h

    ref = sess.run(None, {"h0": x})[0]
    err = float(np.abs(chain(2) - ref).max() / np.abs(ref).max())

    def timed(fn) -> float:
        time.sleep(0.01)  # let the previous contender's threads go idle
        for _ in range(20):
            fn()
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e6

    fns = {"ort_dense_2threads_us": lambda: sess.run(None, {"h0": x}),
           "sparse_1thread_us": lambda: chain(1), "sparse_2threads_us": lambda: chain(2)}
    best = {k: min(timed(f) for _ in range(1)) for k, f in fns.items()}
    for _ in range(2):
        for k, f in fns.items():
            best[k] = min(best[k], timed(f))
    out = {
        "layers": args.layers, "shapes": shapes, "pattern": "2:4",
        "dense_weight_MB": sum(w.nbytes for w in ws) / 1e6,
        "pool_spin_us": os.environ.get("SPARSEC_POOL_SPIN_US", "default (60)"),
        "loadavg": os.getloadavg()[0], **best,
        "speedup_2threads_vs_1": best["sparse_1thread_us"] / best["sparse_2threads_us"],
        "speedup_2threads_vs_ort": best["ort_dense_2threads_us"] / best["sparse_2threads_us"],
        "rel_err_vs_ort": err,
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
