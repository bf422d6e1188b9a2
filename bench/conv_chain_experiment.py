"""What every conv of a network on the SparseConv kernel would give (issue 10, the conv bars).

With only the pruned convs on the kernel, ONNX Runtime runs the others (depthwise, stem) in its
NCHWc layout and reorders around every kernel op. This experiment also puts the remaining convs
on the kernel, as plain sparse convs (a depthwise conv as its block-diagonal dense weight, BN
folded, Relu6 fused), so ORT has no Conv left and reorders nothing. It is an experiment, not a
lowering sparsec offers: the generic kernel is slow for depthwise convs (9 taps per channel).

Writes JSON: medians of the three models timed side by side (dense; pruned convs on the kernel; every
conv on the kernel), their max relative output error against dense, and ORT's profile of each
(ms per op type, and the time of the kernel ops that replace pruned 1x1 convs vs the others).

    .venv/bin/python bench/conv_chain_experiment.py [--model mobilenetv2] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conv_bench  # noqa: E402

from sparsec.backends.ort.conv_ops import sparse_conv_node  # noqa: E402
from sparsec.backends.ort.sparse_ops import session_options  # noqa: E402
from sparsec.bench import emit_json, machine_info, profile_node_events, time_side_by_side  # noqa: E402


def _session(path: str | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(path, session_options(2, None), providers=["CPUExecutionProvider"])


def _conv_input_shapes(path: str, convs: list[onnx.NodeProto], x: np.ndarray) -> dict[str, tuple[int, ...]]:
    probe = onnx.load(path)
    del probe.graph.output[:]
    for n in convs:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None))
    s = _session(probe.SerializeToString())
    outs = s.run(None, {s.get_inputs()[0].name: x})
    return {n.input[0]: o.shape for n, o in zip(convs, outs, strict=True)}


def every_conv_on_kernel(src: str, dst: str, x: np.ndarray) -> int:
    """Rewrite the remaining Conv(+BN)(+Clip 0..6) chains of `src` as SparseConv ops; returns how many."""
    m = onnx.load(src)
    inits = {t.name: t for t in m.graph.initializer}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    shapes = _conv_input_shapes(src, convs, x)
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            users[i].append(n)
    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    new_inits: list[onnx.TensorProto] = []
    for k, n in enumerate(convs):
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        w = arr(n.input[1])
        b = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(w.shape[0], np.float32)
        out = n.output[0]
        nxt = users[out][0] if len(users[out]) == 1 else None
        if nxt is not None and nxt.op_type == "BatchNormalization":
            scale, shift, mean, var = (arr(i) for i in nxt.input[1:5])
            eps = next((helper.get_attribute_value(at) for at in nxt.attribute if at.name == "epsilon"), 1e-5)
            f = scale / np.sqrt(var + eps)
            w, b = w * f[:, None, None, None], (b - mean) * f + shift
            drop.add(id(nxt))
            out = nxt.output[0]
            nxt = users[out][0] if len(users[out]) == 1 else None
        act = "none"
        if (nxt is not None and nxt.op_type == "Clip" and len(nxt.input) == 3
                and float(arr(nxt.input[1])) == 0.0 and float(arr(nxt.input[2])) == 6.0):
            act = "relu6"
            drop.add(id(nxt))
            out = nxt.output[0]
        group = int(a.get("group", 1))
        kc = None
        if group > 1:  # depthwise / grouped: the block-diagonal dense weight, one input chunk
            cout, cpg, kh, kw = w.shape
            full = np.zeros((cout, cpg * group, kh, kw), np.float32)
            opg = cout // group
            for co in range(cout):
                full[co, (co // opg) * cpg:(co // opg + 1) * cpg] = w[co]
            w, kc = full, cpg * group
        _, _, h, wd = shapes[n.input[0]]
        node, its = sparse_conv_node(n.input[0], out, w.astype(np.float32), f"{n.name or 'conv'}_{k}_on_kernel",
                                     h, wd, int(a["strides"][0]), tuple(a["pads"]), b.astype(np.float32), act, kc)
        replace[id(n)] = node
        new_inits += its
    nodes = [replace.get(id(n), n) for n in m.graph.node if id(n) not in drop]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(new_inits)
    onnx.save(m, dst)
    return len(convs)


def profile(path: str, x: np.ndarray, runs: int) -> dict:
    events, recorded = profile_node_events(path, session_options(2, None),
                                           lambda s: {s.get_inputs()[0].name: x}, runs)
    by_op: dict[str, float] = collections.defaultdict(float)
    on_kernel_pruned = on_kernel_other = 0.0
    for e in events:
        ms = e["ms"] / recorded
        by_op[e["op"]] += ms
        if e["op"] == "SparseConv":
            if e["node"].endswith("_on_kernel"):
                on_kernel_other += ms
            else:
                on_kernel_pruned += ms
    return {"ms_per_run_by_op": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "sparseconv_pruned_ms": round(on_kernel_pruned, 3), "sparseconv_other_convs_ms": round(on_kernel_other, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2", choices=["mobilenetv2", "resnet50"])
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of interleaved timing")
    ap.add_argument("--profile-runs", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        conv_bench.SAVE_DIR = d
        conv_bench.bench_model(args.model, 2)  # writes {model}_{dense,sparse_auto,sparse_always}.onnx
        x = np.random.default_rng(0).standard_normal([1, 3, 224, 224]).astype(np.float32)
        paths = {"dense": f"{d}/{args.model}_dense.onnx", "pruned_convs_on_kernel": f"{d}/{args.model}_sparse_always.onnx",
                 "every_conv_on_kernel": f"{d}/{args.model}_every_conv.onnx"}
        rewritten = every_conv_on_kernel(paths["pruned_convs_on_kernel"], paths["every_conv_on_kernel"], x)
        sessions = {k: _session(p) for k, p in paths.items()}
        feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
        ref = sessions["dense"].run(None, feeds["dense"])[0]
        errors = {k: float(np.abs(s.run(None, feeds[k])[0] - ref).max() / np.abs(ref).max()) for k, s in sessions.items()}
        timing = time_side_by_side({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()},
                                   label=args.model, budget_s=args.budget)
        profiles = {k: profile(p, x, args.profile_runs) for k, p in paths.items()}
    med = {k: t.median_ms for k, t in timing.items()}
    doc = {
        "benchmark": "conv_chain_experiment", "model": args.model, "machine": machine_info(), "threads": 2,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "convs_rewritten_onto_kernel": rewritten,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "speedup_vs_dense": {k: round(med["dense"] / v, 3) for k, v in med.items() if k != "dense"},
        "runs": {k: t.runs for k, t in timing.items()},
        "max_rel_err_vs_dense": errors, "profile_runs": args.profile_runs,
        "ort_profile": profiles,
    }
    emit_json(doc, args.out)


if __name__ == "__main__":
    main()
