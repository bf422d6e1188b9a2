"""Seeded fuzzing of sparsec's input parsers at scale; prints JSON.

Runs the generators of tests/fuzz (the test suite runs a few hundred of the same cases) for
many seeds: pipeline text, YAML pipeline files, damaged ONNX files, `.npz` calibration
files, and the kernels' packed formats through Python and through ONNX Runtime sessions.
Every case must succeed or fail with one clean line (tests/fuzz/fuzz_property.py).

    python bench/fuzz.py --cases 100000                # spread over all targets
    python bench/fuzz.py --targets onnx --cases 5000 --start 20000

Output: per target the cases run, successes, clean errors, failures (seed and what escaped,
the first 20) and seconds. Seeds are `start .. start+cases-1` per target, so a failure is
reproduced by `--targets T --start SEED --cases 1`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

# Share of the cases per target (the ORT and ONNX targets cost ~10-40 ms a case, the parsers ~5).
WEIGHTS = {"pipeline_text": 0.25, "pipeline_yaml": 0.15, "onnx": 0.2, "npz": 0.1, "packed_python": 0.15, "packed_ort": 0.15}


def targets() -> dict[str, Callable[[int], object]]:
    from tests.fuzz import gen_npz, gen_onnx, gen_packed, gen_pipeline

    return {
        "pipeline_text": gen_pipeline.text_case,
        "pipeline_yaml": gen_pipeline.yaml_case,
        "onnx": gen_onnx.onnx_case,
        "npz": gen_npz.npz_case,
        "packed_python": gen_packed.python_case,
        "packed_ort": gen_packed.ort_case,
    }


def run(name: str, fn: Callable[[int], object], start: int, cases: int) -> dict[str, object]:
    counts = {"success": 0, "error": 0, "fail": 0}
    failures = []
    t0 = time.perf_counter()
    for seed in range(start, start + cases):
        outcome = fn(seed)
        counts[outcome.kind] += 1  # type: ignore[attr-defined]
        if outcome.failed and len(failures) < 20:  # type: ignore[attr-defined]
            failures.append({"seed": seed, "detail": outcome.detail})  # type: ignore[attr-defined]
    return {"cases": cases, **counts, "failures": failures, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="total cases, shared by the targets")
    parser.add_argument("--targets", default=",".join(WEIGHTS), help="comma-separated targets")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--memory-gb", type=float, default=8, help="address-space limit (a case must not exhaust memory)")
    args = parser.parse_args()
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    known = targets()
    unknown = [t for t in chosen if t not in known]
    if unknown:
        parser.error(f"unknown targets {unknown} (known: {', '.join(known)})")
    total = sum(WEIGHTS[t] for t in chosen)
    report: dict[str, object] = {"start": args.start, "targets": {}}
    t0 = time.perf_counter()
    for name in chosen:
        n = max(1, round(args.cases * WEIGHTS[name] / total))
        report["targets"][name] = run(name, known[name], args.start, n)  # type: ignore[index]
    results = report["targets"].values()  # type: ignore[union-attr]
    report["cases"] = sum(r["cases"] for r in results)
    report["failures"] = sum(r["fail"] for r in results)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["load_average"] = os.getloadavg()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
