"""Sparse convolution benchmark (issue 10, item 4): SparseConv kernel vs ONNX Runtime's dense Conv.

Prints JSON (CPU model, flags, threads, load average). Dense and sparse run side by side in one
process, same threads (ORT intra-op threads = kernel threads), warm-up first, medians of >= 20
runs (>= 5 over 100 ms), through real ORT sessions (the sparse kernel as the custom op).

- layers: ResNet-50 1x1 and 3x3 shapes (2:4 and 80% unstructured) and MobileNetV2 1x1 shapes
  (80% unstructured), batch 1, 224x224 input; dense = a one-node Conv on the same masked weights.
  `predicted` is conv_policy's rule (what `lower-conv-kernels` decides with).
- models: ResNet-50 with 2:4 convs and MobileNetV2 with 80%-unstructured 1x1 convs (zoo builders,
  deterministic weights), dense = the same pruned model through legalize-dense (ORT fuses
  Conv+BN+Relu itself); sparse = lower-conv-kernels (auto = the rule; always = every conv).
  Outputs are checked against the dense model.

    .venv/bin/python bench/conv_bench.py [--threads 2] [--layers-only|--models-only] [--nchw] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from sparsec.bench import emit_json, machine_info

CPU_TIME = False  # --cpu-time: time with the calling thread's CPU clock (1 thread only)
NCHW_TOO = False  # --nchw: models also timed with ORT's NCHWc layout transform off
SAVE_DIR: str | None = None  # --save-models: write each model variant's .onnx here (for bench/ort_profile.py)

RESNET50_LAYERS = [  # (cin, cout, h, k, stride)
    (64, 256, 56, 1, 1), (256, 64, 56, 1, 1), (256, 128, 56, 1, 1), (128, 512, 28, 1, 1),
    (512, 128, 28, 1, 1), (512, 256, 28, 1, 1), (256, 1024, 14, 1, 1), (1024, 256, 14, 1, 1),
    (1024, 512, 14, 1, 1), (512, 2048, 7, 1, 1), (2048, 512, 7, 1, 1),
    (64, 64, 56, 3, 1), (128, 128, 28, 3, 1), (256, 256, 14, 3, 1), (512, 512, 7, 3, 1),
    (128, 128, 56, 3, 2), (256, 256, 28, 3, 2),
]
MOBILENETV2_LAYERS = [  # 1x1 expand / project / head convs
    (16, 96, 112, 1, 1), (96, 24, 56, 1, 1), (24, 144, 56, 1, 1), (144, 24, 56, 1, 1),
    (144, 32, 28, 1, 1), (32, 192, 28, 1, 1), (192, 32, 28, 1, 1), (192, 64, 14, 1, 1),
    (64, 384, 14, 1, 1), (384, 64, 14, 1, 1), (384, 96, 14, 1, 1), (96, 576, 14, 1, 1),
    (576, 96, 14, 1, 1), (576, 160, 7, 1, 1), (160, 960, 7, 1, 1), (960, 160, 7, 1, 1),
    (960, 320, 7, 1, 1), (320, 1280, 7, 1, 1),
]


def machine(threads: int) -> dict:
    """sparsec.bench.machine_info with the thread count and the kernels' instruction sets."""
    from sparsec.kernels import available_isas

    return machine_info(threads=threads, kernel_isas=available_isas(),
                        kernel_isa_forced=os.environ.get("SPARSEC_KERNEL_ISA"))


def prune(w: np.ndarray, pattern: str, rng: np.random.Generator) -> np.ndarray:
    if pattern == "2:4":  # groups of 4 input channels per tap, as nm-sparsity does for Conv
        co, ci, kh, kw = w.shape
        g = np.moveaxis(w, 1, -1).reshape(co, kh, kw, ci // 4, 4)
        order = np.argsort(-np.abs(g), axis=-1)
        keep = np.zeros(g.shape, bool)
        np.put_along_axis(keep, order[..., :2], True, axis=-1)
        return np.moveaxis(np.where(keep, g, 0).reshape(co, kh, kw, ci), -1, 1).astype(np.float32)
    frac = float(pattern.split(":")[1])
    out = w.copy()
    out[np.abs(out) < np.quantile(np.abs(out), frac)] = 0
    return out


def side_by_side(fns: dict, label: str, budget_s: float) -> dict:
    """sparsec.bench.time_side_by_side, or with --cpu-time medians of the thread's CPU time
    (descheduling on a loaded machine does not inflate them; ORT with one intra-op thread and
    the kernel with one thread both run on the calling thread)."""
    import time

    from sparsec.bench import Timing, time_side_by_side

    if not CPU_TIME:
        return time_side_by_side(fns, label=label, budget_s=budget_s)
    for fn in fns.values():
        for _ in range(3):
            fn()
    t0 = time.thread_time()
    for fn in fns.values():
        fn()
    per_round = max(time.thread_time() - t0, 1e-6)
    runs = max(5 if per_round / len(fns) > 0.1 else 20, min(200, int(budget_s / per_round)))
    samples: dict = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.thread_time()
            fn()
            samples[k].append((time.thread_time() - t) * 1e3)
    return {k: Timing(float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)), runs)
            for k, v in samples.items()}


def _op_times_ms(model: object, threads: int, feed: dict, runs: int = 30) -> dict[str, float]:
    """ms per run by op type from ORT's profiler. A one-node dense Conv model runs as
    ReorderInput -> NCHWc Conv -> ReorderOutput: the reorders are part of its wall time but
    not of a conv's cost inside a network, where ORT keeps the NCHWc layout between convs."""
    import collections

    from sparsec.backends.ort.sparse_ops import session_options
    from sparsec.bench import profile_node_events

    events, recorded = profile_node_events(model.SerializeToString(), session_options(threads, None), feed, runs)
    per: dict[str, float] = collections.defaultdict(float)
    for e in events:
        per[e["op"]] += e["ms"] / recorded
    return dict(per)


def layer_row(cin: int, cout: int, h: int, k: int, s: int, pattern: str, threads: int, rng: np.random.Generator) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsec.backends.ort.conv_ops import sparse_conv_node
    from sparsec.backends.ort.conv_policy import ConvSpec, predict_speedup
    from sparsec.backends.ort.sparse_ops import make_session
    from sparsec.kernels.packing_conv import default_kc
    from sparsec.runtime import KERNEL_DOMAIN

    p = k // 2
    w = prune(rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.1, pattern, rng)
    b = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((1, cin, h, h)).astype(np.float32)
    ho = (h + 2 * p - k) // s + 1
    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, h])
    yout = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, ho, ho])
    dense_node = helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[s, s], pads=[p] * 4)
    relu = helper.make_node("Relu", ["c"], ["y"])
    dense = helper.make_model(helper.make_graph([dense_node, relu], "dense", [xin], [yout],
                                                [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]),
                              opset_imports=[helper.make_opsetid("", 17)])
    node, inits = sparse_conv_node("x", "y", w, "conv", h, h, s, (p,) * 4, b, "relu", default_kc(k, k, s))
    sparse = helper.make_model(helper.make_graph([node], "sparse", [xin], [yout], inits),
                               opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    onnx.checker.check_model(dense)
    sd, ss = make_session(dense, threads), make_session(sparse, threads)
    yd, ys = sd.run(None, {"x": x})[0], ss.run(None, {"x": x})[0]
    err = float(np.abs(yd - ys).max() / (np.abs(yd).max() + 1e-30))
    t = side_by_side({"dense": lambda: sd.run(None, {"x": x}), "sparse": lambda: ss.run(None, {"x": x})},
                     label=f"{cin}->{cout} {h} k{k}s{s} {pattern}", budget_s=3.0)
    flops = 2.0 * cout * cin * k * k * ho * ho
    density = float(np.count_nonzero(w)) / w.size
    spec = ConvSpec(cin, cout, k, k, s, h, h, ho, ho, density)
    dense_ops = _op_times_ms(dense, threads, {"x": x})
    sparse_ops = _op_times_ms(sparse, threads, {"x": x})
    conv_only = dense_ops.get("Conv", 0.0) + dense_ops.get("Relu", 0.0)
    return {
        "layer": f"{cin}->{cout} {h}x{h} k{k} s{s}", "pattern": pattern, "density": round(density, 4),
        "dense_ms": round(t["dense"].median_ms, 4), "sparse_ms": round(t["sparse"].median_ms, 4),
        "speedup": round(t["dense"].median_ms / t["sparse"].median_ms, 3),
        # profiled node times: the dense Conv(+Relu) nodes alone, without the NCHWc reorders
        # a one-node model adds around them; against the kernel op's node time
        "profiled_dense_conv_ms": round(conv_only, 4),
        "profiled_dense_reorders_ms": round(sum(v for op, v in dense_ops.items() if op.startswith("Reorder")), 4),
        "profiled_sparse_op_ms": round(sparse_ops.get("SparseConv", 0.0), 4),
        "speedup_vs_conv_node": round(conv_only / max(sparse_ops.get("SparseConv", 0.0), 1e-9), 3),
        "predicted": round(predict_speedup(spec), 3),
        "dense_gflops": round(flops / t["dense"].median_ms / 1e6, 1),
        "sparse_effective_gflops": round(flops / t["sparse"].median_ms / 1e6, 1),
        "max_rel_err": err,
    }


def bench_layers(threads: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for shape in RESNET50_LAYERS:
        for pattern in ("2:4", "u:0.8"):
            rows.append({"model": "resnet50", **layer_row(*shape, pattern, threads, rng)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for shape in MOBILENETV2_LAYERS:
        rows.append({"model": "mobilenetv2", **layer_row(*shape, "u:0.8", threads, rng)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


MOBILENETV2_224 = dict(image_size=224, stem_channels=32, head_channels=1280, num_classes=1000, seed=2,
                       stages=((1, 16, 1, 1, False), (6, 24, 2, 2, False), (6, 32, 3, 2, False), (6, 64, 4, 2, False),
                               (6, 96, 3, 1, False), (6, 160, 3, 2, False), (6, 320, 1, 1, False)))


def _no_nchwc(threads: int) -> object:
    import onnxruntime as ort

    from sparsec.backends.ort.sparse_ops import session_options

    opts = session_options(threads, None)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # all but layout (NCHWc)
    return opts


def bench_model(name: str, threads: int) -> dict:
    import collections

    import onnx_ir as ir

    from sparsec.backends.ort.sparse_ops import make_session
    from sparsec.capture import from_torch
    from sparsec.ir.io import model_bytes, to_proto
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    if name == "resnet50":
        from sparsec.models_zoo.resnet import build_resnet50, resnet50_inputs

        module, inputs, prune_text = build_resnet50(), resnet50_inputs(1), "nm-sparsity{n=2 m=4 op_types=Conv}"
    else:
        from sparsec.models_zoo.mobilenet import MobileNetConfig, build_mobilenet, mobilenet_inputs

        cfg = MobileNetConfig(**MOBILENETV2_224)
        module, inputs = build_mobilenet(cfg), mobilenet_inputs(1, cfg)
        prune_text = "sparsify{pattern=u:0.8 op_types=Conv}"  # depthwise and the 864-weight stem stay dense
    base = from_torch(module, inputs, dynamic_batch=False)
    PassManager(parse_pipeline(prune_text)).run(base, PassContext())
    variants = {}
    for label, pipeline in [("dense", "legalize-dense"), ("sparse_auto", "lower-conv-kernels,legalize-dense"),
                            ("sparse_always", "lower-conv-kernels{policy=always},legalize-dense")]:
        model = ir.serde.deserialize_model(to_proto(base))
        recs = PassManager(parse_pipeline(pipeline)).run(model, PassContext())
        ops = collections.Counter(n.op_type for n in model.graph)
        variants[label] = (make_session(model_bytes(model), threads), recs[0].stats.get("convs_lowered", 0), dict(ops))
        if SAVE_DIR:
            os.makedirs(SAVE_DIR, exist_ok=True)
            with open(os.path.join(SAVE_DIR, f"{name}_{label}.onnx"), "wb") as f:
                f.write(model_bytes(model))
        if NCHW_TOO and label != "sparse_auto":
            # Without ORT's layout level there is no NCHWc, so no reorders around the kernel
            # ops either: what lowering every conv of a chain could at best gain.
            variants[f"{label}_nchw"] = (make_session(model_bytes(model), threads, options=_no_nchwc(threads)), *variants[label][1:])
    x = inputs[0].numpy()
    feed = {variants["dense"][0].get_inputs()[0].name: x}
    ref = variants["dense"][0].run(None, feed)[0]
    errs = {k: float(np.abs(v[0].run(None, feed)[0] - ref).max() / (np.abs(ref).max() + 1e-30)) for k, v in variants.items()}
    t = side_by_side({k: (lambda s=v[0]: s.run(None, feed)) for k, v in variants.items()}, label=name, budget_s=30.0)
    dense_ms = t["dense"].median_ms
    return {
        "model": name, "pruning": prune_text, "threads": threads,
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "median_ms": {k: round(v.median_ms, 3) for k, v in t.items()},
        "runs": {k: v.runs for k, v in t.items()},
        "speedup": {k: round(dense_ms / v.median_ms, 3) for k, v in t.items() if k != "dense"},
        "convs_lowered": {k: v[1] for k, v in variants.items()},
        "max_rel_err_vs_dense": errs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers-only", action="store_true")
    ap.add_argument("--models-only", action="store_true")
    ap.add_argument("--cpu-time", action="store_true", help="1 thread, medians of the thread's CPU time (robust under load)")
    ap.add_argument("--models", default="resnet50,mobilenetv2", help="comma-separated: resnet50, mobilenetv2")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--save-models", metavar="DIR", help="also write each model variant's .onnx to DIR")
    ap.add_argument("--nchw", action="store_true", help="also time the models without ORT's NCHWc layout (dense and every conv lowered)")
    args = ap.parse_args()
    global CPU_TIME, NCHW_TOO, SAVE_DIR
    NCHW_TOO = args.nchw
    SAVE_DIR = args.save_models
    if args.cpu_time:
        CPU_TIME, args.threads = True, 1
    from sparsec.kernels import kernels_available

    if not kernels_available():
        print("conv_bench: sparsec kernels are not built (pip install -e .)", file=sys.stderr)
        return 2
    import sparsec.backends.ort  # noqa: F401  (registers lower-conv-kernels)

    result = {"benchmark": "conv_bench", "machine": machine(args.threads), "timing": "thread CPU time" if CPU_TIME else "wall clock", "note": "timings under load unless the load average says otherwise"}
    if not args.models_only:
        result["layers"] = bench_layers(args.threads)
    if not args.layers_only:
        result["models"] = [bench_model(n, args.threads) for n in args.models.split(",")]
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
