"""Check: a sensitivity scan of BERT-base through the Ray executor gives exactly the local table.

The model: `transformers.BertModel(BertConfig())` with random weights (BERT-base: 12 layers,
hidden 768), batch 1 x --seq tokens, exported offline (bench/compile_time_bench.py's export,
cached under --cache-dir). The scan: `layer-sensitivity` (metric=output: 1 - cosine of the
model's outputs with one layer pruned) for every prunable layer x the candidates, on
--samples random-token calibration samples, once with the local executor and once on a local
Ray instance started here with --num-cpus CPUs. Prints JSON with both tables, whether they
are identical (bit for bit, same layer order), the time of each run, the CPU model and the
load average (the machine may be shared: times are under that load, the tables are not).

    .venv/bin/python bench/ray_sensitivity.py [--seq 128 --samples 4 --candidates 2:4,1:4]
        [--out bench/results/ray_sensitivity_bert_base.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_time_bench import export_bert_base  # noqa: E402

from sparsec.bench import emit_json, machine_info  # noqa: E402
from sparsec.calib.data import CalibrationData  # noqa: E402
from sparsec.executor import LocalExecutor, make_executor  # noqa: E402
from sparsec.ir.io import load_model  # noqa: E402
from sparsec.passes.analysis.sensitivity import SensitivityTable, scan_sensitivity  # noqa: E402
from sparsec.passes.sparsify.patterns import parse_pattern  # noqa: E402


def calibration(samples: int, seq: int, vocab: int = 30522) -> CalibrationData:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(samples, seq), dtype=np.int64)
    return CalibrationData({"input_ids": ids, "attention_mask": np.ones_like(ids)}, batch_size=1)


def timed_scan(model_path: Path, calib: CalibrationData, args: argparse.Namespace, executor: Any) -> tuple[SensitivityTable, dict[str, Any]]:
    model = load_model(str(model_path))
    load = os.getloadavg()
    start = time.perf_counter()
    table = scan_sensitivity(
        model, calib, [parse_pattern(c) for c in args.candidates.split(",")], criterion=args.criterion,
        samples=args.samples, use_cache=False, progress=False, executor=executor,
    )
    seconds = time.perf_counter() - start
    return table, {
        "executor": executor.name, "seconds": round(seconds, 2),
        "load_average_before": [round(x, 2) for x in load], "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def max_difference(a: SensitivityTable, b: SensitivityTable) -> float | None:
    if a.damage.keys() != b.damage.keys() or any(a.damage[k].keys() != b.damage[k].keys() for k in a.damage):
        return None
    return max(abs(a.damage[k][p] - b.damage[k][p]) for k in a.damage for p in a.damage[k])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--candidates", default="2:4,1:4")
    p.add_argument("--criterion", default="wanda")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "sparsec-bench")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.cache_dir / f"hf_bert_base_seq{args.seq}.onnx"
    if not model_path.is_file():
        export_bert_base(model_path, args.seq)
    calib = calibration(args.samples, args.seq)

    local, local_run = timed_scan(model_path, calib, args, LocalExecutor())
    ray_executor = make_executor("ray", num_cpus=args.num_cpus)
    try:
        remote, ray_run = timed_scan(model_path, calib, args, ray_executor)
    finally:
        ray_executor.close()

    import onnxruntime
    import ray

    identical = local.damage == remote.damage and list(local.damage) == list(remote.damage) and local.skipped == remote.skipped
    result = {
        "check": "layer-sensitivity of BERT-base: local executor vs Ray (local instance)",
        "model": {"name": "transformers BertModel(BertConfig()) random weights", "batch": 1, "seq": args.seq},
        "samples": args.samples, "candidates": args.candidates.split(","), "criterion": args.criterion, "metric": "output",
        "layers": len(local.damage), "trials": sum(len(c) for c in local.damage.values()),
        "identical": identical, "max_abs_difference": max_difference(local, remote),
        "local": local_run, "ray": {**ray_run, "num_cpus": args.num_cpus},
        "machine": machine_info(),
        "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "local_table": local.damage, "ray_table": remote.damage, "skipped": local.skipped,
    }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
