"""Never slower (issue 10): compile every zoo model with default flags and report, per model,
the compile's own (fair) latency measurement and its per-layer lowering choices.

Prints JSON: CPU model and flags, threads, load average before/after each model, and per model
dense ms, compiled ms, ratio, noise, layers on kernels / kept dense / moved back by the
never-slower fallback, runtime settings chosen, compile seconds. A model meets the bar when
its ratio is >= 0.97, or when its artifact is byte-identical to the input model or runs its
very program (only weight values differ; its ratio is then the measurement's noise;
`meets_bar_by` says which). One line of JSON per model also goes to stderr as it finishes.

    .venv/bin/python bench/never_slower_bench.py [--models mlp,bert] [--threads 2] > out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BAR = 0.97


def cpu() -> dict[str, Any]:
    from sparsec.tune.signature import _cpuinfo, usable_cores

    model, flags = _cpuinfo()
    return {"model": model, "cores": usable_cores(), "machine": platform.machine(),
            "flags": [f for f in flags if f.startswith(("avx", "fma", "amx"))]}


def run_model(name: str, threads: int) -> dict[str, Any]:
    from sparsec.capture import load_any
    from sparsec.compiler import CompileOptions, compile_model

    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    model, source = load_any(f"zoo:{name}")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = compile_model(model, CompileOptions(threads=threads), source=str(source))
    compile_s = time.perf_counter() - t0
    m = result.manifest
    lat, low = m["latency"], m.get("lowering", {})
    moved = low.get("never_slower", {}).get("moved_to_dense", [])
    ratio = lat.get("speedup")
    return {
        "model": name,
        "dense_ms": lat.get("dense_ms"),
        "compiled_ms": lat.get("compiled_ms"),
        "ratio": ratio,
        "noise": lat.get("noise"),
        # An artifact byte-identical to the input (nothing runs faster sparse here), or running
        # its very program on other weight values, has the dense latency: its measured ratio
        # is noise (0.84-1.28 on the AVX2 EPYC for identical artifacts of small zoo models),
        # and it meets the bar by construction, which `meets_bar_by` says.
        "meets_bar": bool(lat.get("same_program_as_dense")) or (ratio is not None and ratio >= BAR),
        "meets_bar_by": ("identical to dense" if lat.get("identical_to_dense") else
                         "same program as dense" if lat.get("same_program_as_dense") else "measured"),
        "identical_to_dense": lat.get("identical_to_dense"),
        "same_program_as_dense": lat.get("same_program_as_dense"),
        "baseline": lat.get("baseline"),
        "dense_spinning_ms": lat.get("dense_spinning_ms"),
        "dense_no_spinning_ms": lat.get("dense_no_spinning_ms"),
        "compiled_by_setting_ms": lat.get("compiled_by_setting_ms"),
        "runtime_settings": m.get("runtime_settings"),
        "layers_sparse_kernel": low.get("sparse_kernel_layers"),
        "layers_dense": low.get("dense_layers"),
        "layers_moved_back_by_fallback": len(moved),
        "fallback_steps": low.get("never_slower", {}).get("steps"),
        "layer_choices": [{k: e.get(k) for k in ("layer", "runs", "dense_us", "sparse_us", "shape")}
                          for e in low.get("layers", [])],
        "fidelity_worst_cosine": m["fidelity"]["worst_cosine"],
        "verdict": m["verdict"]["status"],
        "summary": m["summary"],
        "load_s": round(load_s, 2),
        "compile_s": round(compile_s, 2),
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    from sparsec.models_zoo import ZOO

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        try:
            row = run_model(name, args.threads)
        except Exception as e:  # one model failing must not lose the others' numbers
            row = {"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "layer_choices"}), file=sys.stderr, flush=True)
    measured = [r for r in results if r.get("ratio") is not None]
    report = {
        "bench": "never_slower",
        "cpu": cpu(),
        "threads": args.threads,
        "bar": BAR,
        "tune_budget_s_per_shape": os.environ.get("SPARSEC_TUNE_BUDGET_S", "1.0 (default)"),
        "bench_budget_s": os.environ.get("SPARSEC_BENCH_BUDGET_S", "4.0 (default)"),
        "models_meeting_bar": sum(r["meets_bar"] for r in measured),
        "models_identical_to_dense": sum(bool(r.get("identical_to_dense")) for r in measured),
        "min_ratio_not_identical": min((r["ratio"] for r in measured if not r.get("identical_to_dense")), default=None),
        "models_measured": len(measured),
        "min_ratio": min((r["ratio"] for r in measured), default=None),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "results": results,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
