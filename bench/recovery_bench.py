"""Recovery on the real MiniLM: one-shot compression, then crop reconstruction and/or
fine-tuning with the dense model as teacher; held-out sentences. Prints one JSON object.

    python bench/recovery_bench.py --task nm --calib 1000 --budget-cpu 1200      # SparseGPT 2:4 + fine-tuning, 10 min x 2 cores
    python bench/recovery_bench.py --task crop --calib 256 --max-seconds 600     # crop 30% MACs + reconstruction + fine-tuning

Three disjoint sentence sets: `--calib` (compression and fine-tuning), `--val` (early
stopping only) and `--eval` (the numbers reported; the same sentences `minilm_task` and
bench/quality_eval.py hold out). `--packed` adds the calibration sentences packed back to
back into full sequences to the training set (more real tokens per step, same sentences).

The JSON records the CPU model, threads, load average before/after, wall and process CPU
seconds of every stage, and the fidelity (mean embedding cosine, nearest-neighbour
agreement) after each stage on held-out sentences (and on `--eval` of the calibration
sentences: the gap shows how much compression and fine-tuning fitted those). The machine
may be shared: the load average says how much of it this run had, and `--budget-cpu` limits
compression + fine-tuning by process CPU seconds (CPU-s / threads estimates the wall time on
idle cores). `--blockwise-epochs` runs block-wise reconstruction (sparsec.recover.blockwise)
before the end-to-end fine-tuning, in `--blockwise-share` of its time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from sparsec.bench import emit_json, machine_info
from sparsec.calib.data import CalibrationData
from sparsec.eval.quality import _embedding_metrics, _run_all, minilm_task
from sparsec.layers import find_layers
from sparsec.models_zoo import minilm
from sparsec.models_zoo.sentences import sentence_split
from sparsec.nm_pattern import nm_violations
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.finetune import FinetuneOptions, finetune


def timed(fn, *args, **kw):  # noqa: ANN001, ANN201
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
                 "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def nm_check(model: ir.Model, n: int = 2, m: int = 4) -> dict[str, int]:
    """Layers holding the N:M pattern and groups breaking it (must be 0 after fine-tuning)."""
    layers, bad = 0, 0
    for layer in find_layers(model):
        w = layer.weight.const_value
        if w is None:
            continue
        layers += 1
        bad += nm_violations(w.numpy(), n, m, layer.reduction_axis)
    return {"layers": layers, "groups_violating": bad}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("nm", "crop"), required=True)
    p.add_argument("--calib", type=int, default=256, help="calibration sentences (<= 1000 for the bar)")
    p.add_argument("--eval", type=int, default=500, help="held-out evaluation sentences")
    p.add_argument("--val", type=int, default=128, help="validation sentences for early stopping (disjoint from both)")
    p.add_argument("--packed", action="store_true", help="also train on the calibration sentences packed into full sequences")
    p.add_argument("--crop", type=float, default=0.3, help="crop: fraction of MACs to remove")
    p.add_argument("--criterion", default="activation", help="crop: which channels go (crop-channels' criterion)")
    p.add_argument("--crop-options", default="", help="crop: more crop-channels options, e.g. 'exclude=...'")
    p.add_argument("--patience", type=int, default=4, help="validation checks without improvement before stopping")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=0.0, help="fine-tuning wall-clock budget (0: none)")
    p.add_argument("--budget-cpu", type=float, default=0.0,
                   help="process CPU seconds for compression + fine-tuning together (0: none; 1200 = 10 min on 2 cores)")
    p.add_argument("--eval-every", type=int, default=25, help="fine-tuning steps between validation checks")
    p.add_argument("--augment", action="store_true", help="fine-tune on augmented copies of the samples too (sparsec.recover.augment)")
    p.add_argument("--augment-mode", default="replace", help="--augment: replace (tokens) or splice (new sequences of real spans)")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the per-layer feature distillation")
    p.add_argument("--blockwise-epochs", type=float, default=0.0,
                   help="block-wise reconstruction before the end-to-end fine-tuning: epochs per block (0: none)")
    p.add_argument("--blockwise-lr", type=float, default=1e-3)
    p.add_argument("--blockwise-share", type=float, default=0.5, help="block-wise part of the fine-tuning time limits")
    p.add_argument("--bf16", action="store_true", help="end-to-end steps under torch's bfloat16 autocast (FinetuneOptions.bf16)")
    p.add_argument("--blockwise-copies", type=int, default=0,
                   help="with --augment: augmented copies of the samples (their changed rows) join the block-wise stage's data")
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
        "machine": machine_info(python=platform.python_version(), torch_threads=torch.get_num_threads()),
        "threads": args.threads, "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    task = minilm_task(n_calib=args.calib, n_eval=args.eval)
    calib_sentences, rest = sentence_split(args.calib, args.eval + args.val)
    validation = CalibrationData(minilm.tokenize(rest[args.eval :]), batch_size=32, source="pydoc validation sentences",
                                 row_mask="attention_mask")
    assert np.array_equal(minilm.tokenize(rest[: args.eval])["input_ids"], task.eval_feeds["input_ids"])  # the same held-out set
    train = task.calib
    if args.packed:
        packed = minilm.packed_calibration(calib_sentences)
        train = CalibrationData({k: np.concatenate([v, packed[k]]) for k, v in task.calib.arrays.items()}, batch_size=32,
                                source="calibration sentences, one per sample and packed", row_mask="attention_mask")
    result["calibration"] = f"{task.calib.num_samples} sentences, one per sample, padding rows masked"
    result["training"] = f"{train.num_samples} samples ({train.source})"
    result["validation_sentences"] = args.val
    result["eval_sentences"] = args.eval
    dense = _run_all(task.model, task.eval_feeds)
    model = task.model.clone()
    if args.task == "nm":
        pipeline = "nm-sparsity{n=2 m=4 criterion=sparsegpt min_params=1}"
    else:
        extra = f" {args.crop_options}" if args.crop_options else ""
        pipeline = f"crop-channels{{macs={args.crop} allocation=uniform criterion={args.criterion} lossy_groups=false{extra}}}"
    result["pipeline"] = pipeline
    # Not CACHE.json: that is a natural --out name and would overwrite the compression record.
    sidecar = args.cache.with_suffix(".compress.json") if args.cache is not None else None
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
    # The same metrics on calibration sentences the compression fitted: the gap to the held-out
    # numbers is how much it overfitted them (MiniLM 2:4 one-shot: 0.985 here vs 0.964 held out).
    fitted = {k: v[: args.eval] for k, v in task.calib.arrays.items()}
    dense_fitted = _run_all(task.model, fitted)
    result["one_shot_on_calibration"] = _embedding_metrics(dense_fitted, _run_all(model, fitted))
    print(json.dumps({"one_shot": result["one_shot"]}), flush=True)
    if not args.no_finetune:
        cpu_left = 0.0
        if args.budget_cpu > 0:
            cpu_left = args.budget_cpu - result["compress"]["cpu_s"]
            if cpu_left <= 0:
                raise SystemExit(f"recovery_bench: compression alone used {result['compress']['cpu_s']} CPU-s of --budget-cpu")
        options = FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch, max_seconds=args.max_seconds,
                                  max_cpu_seconds=cpu_left, eval_every=args.eval_every, threads=args.threads, progress=False,
                                  augment=args.augment, augment_mode=args.augment_mode, feature_weight=args.feature_weight,
                                  patience=args.patience, blockwise_epochs=args.blockwise_epochs,
                                  blockwise_lr=args.blockwise_lr, blockwise_share=args.blockwise_share,
                                  blockwise_copies=args.blockwise_copies, bf16=args.bf16)
        ft, result["finetune"] = timed(finetune, model, task.model, train, options, validation=validation)
        result["finetune"]["result"] = ft.to_dict()
        result["finetuned"] = _embedding_metrics(dense, _run_all(model, task.eval_feeds))
        result["finetuned_on_calibration"] = _embedding_metrics(dense_fitted, _run_all(model, fitted))
        if args.task == "nm":
            result["nm_2_4_after_finetune"] = nm_check(model)
            assert result["nm_2_4_after_finetune"]["groups_violating"] == 0, "fine-tuning broke the 2:4 pattern"
        result["total"] = {k: round(result["compress"][k] + result["finetune"][k], 2) for k in ("wall_s", "cpu_s")}
        result["total"]["idle_2core_wall_estimate_s"] = round(result["total"]["cpu_s"] / 2, 1)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
