"""Sparse convs inside ONNX Runtime's NCHWc layout (backends/ort/nchwc_convs.py) vs the dense model.

Per model: the zoo builder's deterministic weights, pruned by the compiler's own pass, written as
plain ONNX (legalize-dense); dense = that model in ONNX Runtime with every optimization (its NCHWc
transformer included); sparse = ORT's laid-out model with the N:M convs the kernel beat (per
conv, ORT's profiler) on SparseConvNchwc. Both sessions in one process, same threads, ORT's
spinning off for both, interleaved, medians; `--repeats` independent timing rounds (the issue's
bars ask for medians of >= 5). Outputs are checked against the dense model. Prints JSON (CPU
model, flags, load average).

    .venv/bin/python bench/conv_nchwc_bench.py [--models resnet50,mobilenetv2_u80,mobilenetv2_24,resnet50_u80] [--repeats 5] [--no-balance] [--no-fuse] [--best-settings] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from sparsec.bench import emit_json, machine_info, time_side_by_side

MODELS = {
    "resnet50": "nm-sparsity{n=2 m=4 op_types=Conv}",
    # The MobileNetV2 bar: 80% unstructured 1x1 convs (depthwise and stem stay dense).
    "mobilenetv2_u80": "sparsify{pattern=u:0.8 op_types=Conv}",
    "mobilenetv2_24": "nm-sparsity{n=2 m=4 op_types=Conv}",
    # Not a bar: the unstructured path (blocks of unequal length) on a large CNN.
    "resnet50_u80": "sparsify{pattern=u:0.8 op_types=Conv}",
}


def build(name: str, balance: bool = True) -> tuple[bytes, dict[str, np.ndarray]]:
    import onnxruntime as ort

    from sparsec.capture import from_torch
    from sparsec.ir.io import model_bytes
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    if name.startswith("resnet50"):
        from sparsec.models_zoo.resnet import build_resnet50, resnet50_inputs

        module, inputs = build_resnet50(), resnet50_inputs(1)
    else:
        from conv_bench import MOBILENETV2_224

        from sparsec.models_zoo.mobilenet import MobileNetConfig, build_mobilenet, mobilenet_inputs

        cfg = MobileNetConfig(**MOBILENETV2_224)
        module, inputs = build_mobilenet(cfg), mobilenet_inputs(1, cfg)
    model = from_torch(module, inputs, dynamic_batch=False)
    PassManager(parse_pipeline(f"{MODELS[name]},legalize-dense")).run(model, PassContext())
    if balance:  # as lower-conv-nchwc does before it lays the model out
        from sparsec.backends.ort.lane_balance import balance_conv_lanes

        balance_conv_lanes(model)
    data = model_bytes(model)
    name_in = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    return data, {name_in: inputs[0].numpy()}


def ab_sessions(data: bytes, models: dict[str, bytes], feeds: dict[str, np.ndarray], threads: int) -> tuple:
    """(dense session, {name: session of each lowered model}, {name: max relative error vs
    dense}): dense in plain ORT, ORT's spinning off for all, as the A/B benches time them."""
    import onnxruntime as ort

    from sparsec.backends.ort.sparse_ops import make_session

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    dense = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    sessions = {k: make_session(m, threads) for k, m in models.items()}
    ref = dense.run(None, feeds)[0]
    errors = {k: float(np.abs(s.run(None, feeds)[0] - ref).max() / np.abs(ref).max()) for k, s in sessions.items()}
    return dense, sessions, errors


def interleaved_rounds(name: str, dense, sessions: dict, feeds: dict[str, np.ndarray], rounds: int,  # noqa: ANN001
                       budget_s: float) -> list[dict]:
    """`rounds` rounds of the dense session and each of `sessions` timed interleaved: per round
    each one's median ms and its speedup over dense, and the load average."""
    out = []
    for r in range(rounds):
        t = time_side_by_side({"dense": lambda: dense.run(None, feeds),
                               **{k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}},
                              label=f"{name} round {r + 1}/{rounds}", budget_s=budget_s)
        d = t["dense"].median_ms
        out.append({"dense_ms": round(d, 4), **{f"{k}_ms": round(t[k].median_ms, 4) for k in sessions},
                    **{f"{k}_speedup": round(d / t[k].median_ms, 4) for k in sessions},
                    "loadavg_1min": round(os.getloadavg()[0], 2)})
    return out


def _round_spinning_off(dense, sparse, feeds, label: str, budget_s: float) -> dict:  # noqa: ANN001
    t = time_side_by_side({"dense": lambda: dense[False].run(None, feeds), "sparse": lambda: sparse[False].run(None, feeds)},
                          label=label, budget_s=budget_s)
    return {"dense_ms": round(t["dense"].median_ms, 3), "sparse_ms": round(t["sparse"].median_ms, 3),
            "speedup": round(t["dense"].median_ms / t["sparse"].median_ms, 4), "runs": t["dense"].runs}


def _round_best_settings(dense, sparse, feeds, label: str, budget_s: float) -> dict:  # noqa: ANN001
    """The compile's protocol (sparsec.bench.compare_interleaved): each side with ORT's spinning
    off and on, the faster of each counting."""
    from sparsec.bench import compare_interleaved

    fns = {f"{side} spin={int(spin)}": (lambda s=sess: s.run(None, feeds))
           for side, sessions in (("dense", dense), ("sparse", sparse)) for spin, sess in sessions.items()}
    t = compare_interleaved("dense spin=1", fns, budget_s=budget_s, min_rounds=7, max_rounds=100, label=label).timings
    d = min(t[f"dense spin={i}"].median_ms for i in (0, 1))
    s = min(t[f"sparse spin={i}"].median_ms for i in (0, 1))
    return {"dense_ms": round(d, 3), "sparse_ms": round(s, 3), "speedup": round(d / s, 4),
            "by_setting_ms": {k: round(v.median_ms, 3) for k, v in t.items()}}


def bench(name: str, threads: int, repeats: int, budget_s: float, balance: bool = True, fuse: bool = True,
          best_settings: bool = False) -> dict:
    import onnxruntime as ort

    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs
    from sparsec.backends.ort.sparse_ops import make_session

    data, feeds = build(name, balance)
    t0 = time.perf_counter()
    low = lower_nchwc_convs(data, feeds, threads, fuse_depthwise=fuse)
    lowering_s = time.perf_counter() - t0
    dense, sparse = {}, {}
    for spin in (False, True) if best_settings else (False,):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
        dense[spin] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        sparse[spin] = make_session(low.model, threads, allow_spinning=spin)
    ref, got = dense[False].run(None, feeds)[0], sparse[False].run(None, feeds)[0]
    timed = _round_best_settings if best_settings else _round_spinning_off
    rounds = []
    for r in range(repeats):
        rounds.append({**timed(dense, sparse, feeds, f"{name} round {r + 1}/{repeats}", budget_s),
                       "loadavg_1min": round(os.getloadavg()[0], 2)})
    speedups = sorted(r["speedup"] for r in rounds)
    return {"model": name, "pruning": MODELS[name], "threads": threads, "lowering_s": round(lowering_s, 2),
            "protocol": "best of spinning off/on per side (the compile's)" if best_settings else "spinning off both sides",
            "lowering": low.to_dict(), "max_rel_err_vs_dense": float(np.abs(got - ref).max() / np.abs(ref).max()),
            "rounds": rounds, "median_speedup": speedups[len(speedups) // 2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2_u80,mobilenetv2_24")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of interleaved timing per round")
    ap.add_argument("--no-balance", action="store_true", help="no channel permutation (backends/ort/lane_balance.py)")
    ap.add_argument("--no-fuse", action="store_true", help="no depthwise conv inside the 1x1 conv that reads it "
                    "(backends/ort/nchwc_dw_fusion.py)")
    ap.add_argument("--best-settings", action="store_true",
                    help="each side with ORT's spinning off and on, the faster counting (the compile's protocol)")
    ap.add_argument("--out")
    args = ap.parse_args()
    from sparsec.backends.ort.nchwc_convs import nchwc_available

    if not nchwc_available():
        print("conv_nchwc_bench: needs the built kernels and an AVX-512 CPU", file=sys.stderr)
        return 2
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        print(f"conv_nchwc_bench: unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    result = {"benchmark": "conv_nchwc_bench", "machine": machine_info(threads=args.threads),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
              "balance": not args.no_balance, "fuse_depthwise": not args.no_fuse,
              "models": [bench(m, args.threads, args.repeats, args.budget, not args.no_balance, not args.no_fuse,
                               args.best_settings) for m in args.models.split(",")]}
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conv_bench's MobileNetV2 config
    sys.exit(main())
