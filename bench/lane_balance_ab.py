"""Channel permutation for the NCHWc conv kernel (backends/ort/lane_balance.py), A/B in one process.

Per model (conv_nchwc_bench's models and pruning): the dense model, the model lowered onto the
NCHWc kernel as pruned, and the same after `balance_conv_lanes`, timed interleaved in rounds
(ORT's spinning off for all three, 2 threads). Prints JSON with the kernel's pairs before and
after the permutation, the medians per round and the CPU model and flags.

    .venv/bin/python bench/lane_balance_ab.py [--models mobilenetv2_u80] [--rounds 3] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sparsec.bench import emit_json, machine_info


def run(name: str, threads: int, rounds: int, budget_s: float) -> dict:
    import onnx
    import onnx_ir as ir
    from conv_nchwc_bench import ab_sessions, build, interleaved_rounds

    from sparsec.backends.ort.lane_balance import balance_conv_lanes
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs
    from sparsec.ir.io import model_bytes

    data, feeds = build(name, balance=False)
    model = ir.serde.deserialize_model(onnx.load_from_string(data))
    paths = balance_conv_lanes(model)
    balanced = model_bytes(model)
    lows = {"as_pruned": lower_nchwc_convs(data, feeds, threads), "balanced": lower_nchwc_convs(balanced, feeds, threads)}
    dense, sessions, errors = ab_sessions(data, {k: low.model for k, low in lows.items()}, feeds, threads)
    out = interleaved_rounds(name, dense, sessions, feeds, rounds, budget_s)
    permuted = [p for p in paths if p["permuted"]]
    return {"model": name, "paths": len(paths), "paths_permuted": len(permuted),
            "pairs_before": sum(p["pairs_before"] for p in paths),
            "pairs_after": sum(p["pairs_after"] if p["permuted"] else p["pairs_before"] for p in paths),
            "lowered": {k: low.lowered for k, low in lows.items()}, "max_rel_err_vs_dense": errors, "rounds": out,
            "median_speedup": {k: float(np.median([r[f"{k}_speedup"] for r in out])) for k in sessions}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv2_u80")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of interleaved timing per round")
    ap.add_argument("--out")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    result = {"benchmark": "lane_balance_ab", "machine": machine_info(threads=args.threads),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()],
              "models": [run(m, args.threads, args.rounds, args.budget) for m in args.models.split(",")]}
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
