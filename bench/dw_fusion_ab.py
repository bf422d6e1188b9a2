"""Depthwise convs inside the sparse 1x1 convs that read them (backends/ort/nchwc_dw_fusion.py), A/B in one process.

Per model (conv_nchwc_bench's models and pruning, lanes balanced): the dense model, the model
lowered onto the NCHWc kernel with every eligible conv and no fusion, and the same with every
depthwise conv that can run inside its project conv fused (`measure=False` on both: the same
convs on the kernel, only the fusion differs), timed interleaved in rounds (ORT's spinning off,
2 threads). Then ORT's profiler on both lowered models: per fused conv, its node time against
the unfused 1x1 conv's plus the depthwise conv's. Prints JSON with the CPU model and flags.

    .venv/bin/python bench/dw_fusion_ab.py [--models mobilenetv2_u80,mobilenetv2_24] [--rounds 3] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sparsec.bench import emit_json, machine_info


def _node_times(low_plain: bytes, low_fused: bytes, feeds: dict, threads: int, runs: int) -> list[dict]:
    import onnx

    from sparsec.backends.ort.nchwc_convs import node_attrs, profile_node_ms

    plain, fused = onnx.load_from_string(low_plain), onnx.load_from_string(low_fused)
    t_plain, t_fused = profile_node_ms(low_plain, threads, feeds, runs), profile_node_ms(low_fused, threads, feeds, runs)
    producer = {o: n for n in plain.graph.node for o in n.output}
    by_name = {n.name: n for n in plain.graph.node}
    rows = []
    for n in fused.graph.node:
        a = node_attrs(n)
        if not a.get("has_dw") or n.name not in by_name:
            continue
        dw = producer[by_name[n.name].input[0]]
        one, dwt, f = t_plain.get(n.name), t_plain.get(dw.name), t_fused.get(n.name)
        if None in (one, dwt, f):
            continue
        rows.append({"conv": n.name, "cin": a["cin"], "cout": a["cout"], "dw_stride": a["dw_stride_h"],
                     "sparse_1x1_ms": round(one, 4), "depthwise_ms": round(dwt, 4), "fused_ms": round(f, 4),
                     "fused_vs_both": round((one + dwt) / f, 3)})
    return rows


def run(name: str, threads: int, rounds: int, budget_s: float, runs: int) -> dict:
    from conv_nchwc_bench import ab_sessions, build, interleaved_rounds

    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs

    data, feeds = build(name)
    lows = {"unfused": lower_nchwc_convs(data, feeds, threads, measure=False, fuse_depthwise=False),
            "fused": lower_nchwc_convs(data, feeds, threads, measure=False)}
    dense, sessions, errors = ab_sessions(data, {k: low.model for k, low in lows.items()}, feeds, threads)
    out = interleaved_rounds(name, dense, sessions, feeds, rounds, budget_s)
    nodes = _node_times(lows["unfused"].model, lows["fused"].model, feeds, threads, runs)
    return {"model": name, "lowered": {k: low.lowered for k, low in lows.items()},
            "depthwise_fused": lows["fused"].depthwise_fused, "max_rel_err_vs_dense": errors, "rounds": out,
            "median_speedup": {k: float(np.median([r[f"{k}_speedup"] for r in out])) for k in sessions},
            "node_times": nodes,
            "node_sum_ms": {"unfused_1x1_plus_depthwise": round(sum(n["sparse_1x1_ms"] + n["depthwise_ms"] for n in nodes), 4),
                            "fused": round(sum(n["fused_ms"] for n in nodes), 4)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv2_u80")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of interleaved timing per round")
    ap.add_argument("--profile-runs", type=int, default=50, help="ORT profiler runs for the node times")
    ap.add_argument("--out")
    args = ap.parse_args()
    from sparsec.backends.ort.nchwc_convs import nchwc_available

    if not nchwc_available():
        print("dw_fusion_ab: needs the built kernels and an AVX-512 CPU", file=sys.stderr)
        return 2
    from conv_nchwc_bench import MODELS

    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        print(f"dw_fusion_ab: unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    result = {"benchmark": "dw_fusion_ab", "machine": machine_info(threads=args.threads),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
              "models": [run(m, args.threads, args.rounds, args.budget, args.profile_runs) for m in args.models.split(",")]}
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conv_nchwc_bench, conv_bench
    sys.exit(main())
