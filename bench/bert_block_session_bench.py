"""BERT-base layer chain in one ONNX Runtime session: x @ W1 (768x768) @ W2 (768x3072) @ W3
(3072x768) at R rows, 2:4 and 4:8, as sparsec kernel custom ops with kernel_threads 1 and 2
vs dense ORT MatMul (session threads 2). Prints JSON (ms: median of the runs, best of 3
rounds).

    flock /tmp/sparsec-cpu.lock .venv/bin/python bench/bert_block_session_bench.py 128 [runs]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import sparsec.kernels as sk
from sparsec.backends.ort.sparse_ops import make_session, nm_matmul_node

SHAPES = ((768, 768), (768, 3072), (3072, 768))


def timed(fn, runs: int) -> float:
    time.sleep(0.01)
    for _ in range(5):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rng = np.random.default_rng(0)
    out: dict = {"rows": rows}
    for pat in ("2:4", "4:8"):
        n, m = map(int, pat.split(":"))
        ws = [sk.prune_nm(rng.standard_normal(s).astype(np.float32) / np.sqrt(s[0]), n, m)
              for s in SHAPES]
        x = rng.standard_normal((rows, 768)).astype(np.float32)
        xin = helper.make_tensor_value_info("h0", TensorProto.FLOAT, [rows, 768])
        yout = helper.make_tensor_value_info("h3", TensorProto.FLOAT, [rows, 768])
        dn = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(3)]
        inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)]
        dm = helper.make_model(helper.make_graph(dn, "d", [xin], [yout], inits),
                               opset_imports=[helper.make_opsetid("", 17)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        dense = ort.InferenceSession(dm.SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"])
        nodes, sinits = [], []
        for i, w in enumerate(ws):
            node, its = nm_matmul_node(f"h{i}", f"h{i + 1}", w, n, m, f"l{i}")
            nodes.append(node)
            sinits += its
        sm = helper.make_model(helper.make_graph(nodes, "s", [xin], [yout], sinits),
                               opset_imports=[helper.make_opsetid("", 17),
                                              helper.make_opsetid("com.sparsec.kernels", 1)])
        ref = dense.run(None, {"h0": x})[0]
        res = {}
        for kt in (1, 2):
            sess = make_session(sm, threads=2, kernel_threads=kt)
            y = sess.run(None, {"h0": x})[0]
            assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
            res[f"sparse_kt{kt}_ms"] = min(
                timed(lambda s=sess, x=x: s.run(None, {"h0": x}), runs) for _ in range(3))
        res["dense_ort_ms"] = min(
            timed(lambda d=dense, x=x: d.run(None, {"h0": x}), runs) for _ in range(3))
        for kt in (1, 2):
            res[f"speedup_kt{kt}"] = res["dense_ort_ms"] / res[f"sparse_kt{kt}_ms"]
        out[pat] = res
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
