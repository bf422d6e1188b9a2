"""Kernel threads per call in a whole model: dense ORT vs the compiled model with several caps
on the threads of one sparse-kernel call (session config `sparsec.kernel_threads`).

Compiles a model_bench case once (2:4), then times dense and every cap side by side in one
process (sparsec.bench.time_side_by_side: warm-up, blocked round-robin, medians), `--repeats`
times. Prints JSON.

    .venv/bin/python bench/kernel_threads_bench.py --case gpt_step --caps 1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="gpt_step")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--caps", default="1,2", help="kernel thread caps to compare (0 = all cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=40.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from model_bench import capture

    from sparsec.bench import time_side_by_side
    from sparsec.compiler import CompileOptions, compile_model
    from sparsec.ir.io import model_bytes
    from sparsec.numerics import sample_inputs
    from sparsec.runtime import make_session

    dense_bytes = model_bytes(capture(args.case))
    model = capture(args.case)
    result = compile_model(model, CompileOptions(sparsity=args.pattern, threads=args.threads,
                                                 bench=False, fidelity_samples=1),
                           source=f"bench:{args.case}")
    compiled = result.files["model.onnx"]
    feeds = sample_inputs(model)
    sessions = {"dense": make_session(dense_bytes, args.threads)}
    for cap in (int(c) for c in args.caps.split(",")):
        sessions[f"cap{cap}"] = make_session(compiled, args.threads, custom_ops=True, kernel_threads=cap)
    runs = []
    for _ in range(args.repeats):
        timings = time_side_by_side({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                                    budget_s=args.budget_s, label="caps")
        d = timings["dense"].median_ms
        runs.append({k: {**t.to_dict(), "speedup": round(d / t.median_ms, 4)} for k, t in timings.items()})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"case": args.case, "pattern": args.pattern, "threads": args.threads,
                      "runs": runs, "load_average": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
