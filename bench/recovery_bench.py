"""Recovery on the real MiniLM: one-shot compression, then crop reconstruction and/or
fine-tuning with the dense model as teacher; held-out sentences. Prints one JSON object.

    python bench/recovery_bench.py --task nm --calib 256 --max-seconds 600       # SparseGPT 2:4 + fine-tuning
    python bench/recovery_bench.py --task crop --calib 256 --max-seconds 600     # crop 30% MACs + reconstruction + fine-tuning

The JSON records the CPU model, threads, load average before/after, wall and process CPU
seconds of every stage, and the fidelity (mean embedding cosine, nearest-neighbour
agreement) after each stage on held-out sentences. The machine may be shared: the load
average says how much of it this run had.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch

from sparsec.eval.quality import _embedding_metrics, _run_all, minilm_task
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.finetune import FinetuneOptions, finetune


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            if key.strip() == "Flags":
                info["avx512"] = "avx512f" in value
    except OSError:
        pass
    return info


def timed(fn, *args, **kw):  # noqa: ANN001, ANN201
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
                 "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("nm", "crop"), required=True)
    p.add_argument("--calib", type=int, default=256, help="calibration sentences (<= 1000 for the bar)")
    p.add_argument("--eval", type=int, default=500, help="held-out evaluation sentences")
    p.add_argument("--crop", type=float, default=0.3, help="crop: fraction of MACs to remove")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=600.0, help="fine-tuning wall-clock budget (0: none)")
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=None,
                   help="keep the one-shot model here (and reuse it if present, with the timing it recorded)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "command": "python bench/recovery_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": machine(), "threads": args.threads, "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    task = minilm_task(n_calib=args.calib, n_eval=args.eval)
    result["calibration"] = f"{task.calib.num_samples} sentences, one per sample, padding rows masked"
    result["eval_sentences"] = args.eval
    dense = _run_all(task.model, task.eval_feeds)
    model = task.model.clone()
    if args.task == "nm":
        pipeline = "nm-sparsity{n=2 m=4 criterion=sparsegpt min_params=1}"
    else:
        pipeline = f"crop-channels{{macs={args.crop} allocation=uniform criterion=activation lossy_groups=false}}"
    result["pipeline"] = pipeline
    sidecar = args.cache.with_suffix(".json") if args.cache is not None else None
    if args.cache is not None and args.cache.is_file() and sidecar is not None and sidecar.is_file():
        model = ir.load(args.cache)
        result["compress"] = {**json.loads(sidecar.read_text()), "reused_from": str(args.cache)}
    else:
        ctx = PassContext(calibration=task.calib)
        records, result["compress"] = timed(PassManager(parse_pipeline(pipeline), verify_numerics=False).run, model, ctx)
        result["compress"]["stats"] = {k: v for k, v in records[-1].stats.items() if isinstance(v, (int, float, str))}
        if args.cache is not None and sidecar is not None:
            ir.save(model, args.cache)
            sidecar.write_text(json.dumps(result["compress"]))
    result["one_shot"] = _embedding_metrics(dense, _run_all(model, task.eval_feeds))
    print(json.dumps({"one_shot": result["one_shot"]}), flush=True)
    if not args.no_finetune:
        options = FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch, max_seconds=args.max_seconds,
                                  threads=args.threads, progress=False)
        ft, result["finetune"] = timed(finetune, model, task.model, task.calib, options)
        result["finetune"]["result"] = ft.to_dict()
        result["finetuned"] = _embedding_metrics(dense, _run_all(model, task.eval_feeds))
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
