"""Time of the sensitivity scan plus allocation on a zoo encoder; prints JSON.

    python bench/allocation_time.py --model bert_base --threads 2

Calibration: token batches from the zoo's input generator (the zoo encoder has
deterministic random weights, so there is no "real" text distribution to match).
The scan uses the Gram-based proxy metric (one statistics sweep, no per-trial forward
pass); allocation targets half the predicted latency and applies its choice with wanda.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter

from sparsec.calib.data import CalibrationData
from sparsec.models_zoo import get
from sparsec.models_zoo.export import export_ir
from sparsec.pm import PassContext, PassManager, parse_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bert_base")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--pipeline",
        default="allocate{target=latency budget=0.4 metric=proxy scan_criterion=wanda criterion=wanda sequential=false samples=8}",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = export_ir(args.model)
    export_s = time.perf_counter() - t0
    entry = get(args.model)
    feeds = {name: t.numpy() for name, t in zip(entry.input_names, entry.example_inputs(args.samples), strict=True)}
    calib = CalibrationData(feeds, batch_size=4, source=f"zoo:{args.model} example inputs")
    ctx = PassContext(calibration=calib)
    t1 = time.perf_counter()
    records = PassManager(parse_pipeline(args.pipeline), verify_numerics=False).run(model, ctx)
    seconds = time.perf_counter() - t1
    stats = records[-1].stats
    print(json.dumps({
        "model": args.model,
        "pipeline": args.pipeline,
        "threads": args.threads,
        "calibration_samples": calib.num_samples,
        "export_seconds": round(export_s, 1),
        "sensitivity_plus_allocation_seconds": round(seconds, 1),
        "sensitivity_seconds": stats.get("sensitivity_seconds"),
        "layers_considered": stats.get("layers_considered"),
        "layers_sparse": stats.get("layers_sparse"),
        "predicted_speedup": stats.get("predicted_speedup"),
        "measured_fidelity": stats.get("measured_fidelity"),
        "choices": dict(Counter(d["decision"] for d in ctx.decisions if d["pass"] == "allocate")),
    }))


if __name__ == "__main__":
    main()
