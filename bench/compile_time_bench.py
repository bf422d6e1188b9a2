"""Compile time of a Hugging Face BERT-base export (issue 10's bar: <= 5 s); prints JSON.

    .venv/bin/python bench/compile_time_bench.py [--model bert.onnx] [--runs 3] [--no-profile]

The model (unless --model is given): `transformers.BertModel(BertConfig())` with random weights
(BERT-base: 12 layers, hidden 768), batch 1, sequence 128, exported offline with the
TorchScript ONNX exporter at opset 17, cached under --cache-dir. The measured command is the
issue's: `sparsec compile bert.onnx --sparsity=2:4 --no-bench -o OUT` (verify-each on), run
`--runs` times as a subprocess; the JSON holds each run's wall time and the process's CPU time
(user + sys; other load on the machine disturbs it less than wall time), with the load average
before and after. Then one in-process compile under cProfile, clocked in process CPU time,
gives the breakdown: cumulative CPU seconds in each phase (load, structural verification,
numeric verification, ORT session creation and runs, serialization, pruning masks, packing,
plots, artifact writing). `--from-profile FILE` prints the phases of a saved profile.
To compare with another commit, run this file with PYTHONPATH pointing at that commit's
packages laid out as `sparsec/` (with passes, backends, kernels, models_zoo inside).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from sparsec.bench import machine_info

# (label, file suffix, function name) of the profile's phases; cumulative time, so they overlap
# (numeric verification includes its session creation, for example).
PHASES = [
    ("load_model", "sparsec/ir/io.py", "load_model"),
    ("onnx_checker_on_load", "onnx/checker.py", "check_model"),
    ("pass_manager_total", "sparsec/pm/manager.py", "run"),
    ("structural_verify", "sparsec/verify.py", "verify_model"),
    ("numeric_verify", "sparsec/numerics.py", "evaluate_batches"),
    ("nm_sparsity_pass", "passes/sparsify/nm_sparsity.py", "run"),
    ("nm_masks", "sparsec/nm_pattern.py", "nm_mask"),
    ("lower_nm_kernels_pass", "backends/ort/lower_nm_kernels.py", "run"),
    ("pack_nm", "kernels/packing_nm.py", "pack_nm"),
    ("session_model_split", "sparsec/ir/session_model.py", "session_model"),
    ("ort_session_create", "onnxruntime/capi/onnxruntime_inference_collection.py", "_create_inference_session"),
    ("ort_run", "onnxruntime/capi/onnxruntime_inference_collection.py", "run"),
    ("fidelity", "sparsec/compiler.py", "_fidelity"),
    ("model_bytes_full_serialization", "sparsec/ir/io.py", "model_bytes"),
    ("cost_model", "passes/analysis/cost_model.py", "estimate_costs"),
    ("sparsity_plot_wait", "sparsec/plot_job.py", "result"),
    ("write_artifact", "sparsec/artifact.py", "write_artifact"),
    ("compile_file_total", "sparsec/compiler.py", "compile_file"),
]
BUILTINS = [
    ("protobuf_SerializeToString", "SerializeToString"),
    ("numpy_argsort", "argsort' of 'numpy.ndarray"),
]


def export_bert_base(path: Path, seq: int) -> None:
    """BERT-base from its config (random weights, offline), exported at batch 1 x `seq`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(attn_implementation="eager")
    bert = transformers.BertModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, seq))

    class Plain(torch.nn.Module):  # tensors out, not a ModelOutput
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Plain().eval(), (ids, torch.ones_like(ids)), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"])
    os.replace(tmp, path)



def timed_cli_run(model: Path, out: Path) -> dict[str, Any]:
    """One `sparsec compile` as a subprocess: wall time and the child's CPU time."""
    sparsec = Path(sys.executable).with_name("sparsec")
    cmd = [str(sparsec), "-q", "compile", str(model), "--sparsity=2:4", "--no-bench", "-o", str(out)]
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"compile_time_bench: sparsec compile failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 3),
        "cpu_sys_s": round(after.ru_stime - before.ru_stime, 3),
        "max_rss_mb": round(after.ru_maxrss / 1024, 1),
        "exit_status": proc.returncode,
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def import_time() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sparsec.cli.main, sparsec.compiler"], check=True)
    return round(time.perf_counter() - t0, 3)


def phases_from_stats(stats: pstats.Stats) -> dict[str, Any]:
    """Cumulative seconds and calls of each PHASES function (own time for BUILTINS)."""
    phases: dict[str, Any] = {}
    for label, suffix, func in PHASES:
        total, calls = 0.0, 0
        for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if name == func and filename.endswith(suffix):
                total, calls = total + ct, calls + nc
        phases[label] = {"seconds": round(total, 3), "calls": calls}
    for label, needle in BUILTINS:
        total, calls = 0.0, 0
        for (_f, _l, name), (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if needle in name:
                total, calls = total + tt, calls + nc
        phases[label] = {"seconds": round(total, 3), "calls": calls}
    return phases


def profiled_compile(model: Path, out: Path) -> dict[str, Any]:
    from sparsec.compiler import CompileOptions, compile_file

    # Timed in process CPU time (all threads), which other load on the machine disturbs far
    # less than wall time.
    profile = cProfile.Profile(time.process_time)
    t0, c0 = time.perf_counter(), time.process_time()
    profile.enable()
    compile_file(model, out, CompileOptions(sparsity="2:4", bench=False))
    profile.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = pstats.Stats(profile, stream=io.StringIO())
    phases = phases_from_stats(stats)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
    return {"wall_s_under_profiler": round(wall, 3), "cpu_s_under_profiler": round(cpu, 3),
            "phase_clock": "process CPU seconds (cumulative per function; phases overlap)", "phases": phases,
            "top_cumulative": [line.strip() for line in text.getvalue().splitlines() if "(" in line][:25]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="an ONNX file (default: the BERT-base export, built once)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "sparsec-bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--from-profile", type=Path, help="only print the phases of a saved cProfile file")
    args = p.parse_args()
    if args.from_profile is not None:
        print(json.dumps({"profile": str(args.from_profile), "phases": phases_from_stats(pstats.Stats(str(args.from_profile)))}, indent=1))
        return
    model = args.model
    if model is None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        model = args.cache_dir / f"hf_bert_base_seq{args.seq}.onnx"
        if not model.is_file():
            export_bert_base(model, args.seq)
    work = Path(tempfile.mkdtemp(prefix="compile-time-bench-"))
    try:
        result: dict[str, Any] = {
            "command": f"sparsec compile {model.name} --sparsity=2:4 --no-bench -o OUT",
            "model": str(model),
            "model_bytes": model.stat().st_size,
            "bar_s": 5.0,
            "cpu": machine_info(),
            "python": platform.python_version(),
            "import_s": import_time(),
            "runs": [],
        }
        for i in range(args.runs):
            result["runs"].append(timed_cli_run(model, work / f"cli{i}"))
            shutil.rmtree(work / f"cli{i}", ignore_errors=True)
        walls = sorted(r["wall_s"] for r in result["runs"])
        cpus = sorted(r["cpu_user_s"] + r["cpu_sys_s"] for r in result["runs"])
        if walls:
            result["wall_s_median"] = walls[len(walls) // 2]
            result["wall_s_min"] = walls[0]
            result["cpu_s_median"] = round(cpus[len(cpus) // 2], 3)
        if not args.no_profile:
            result["profile"] = profiled_compile(model, work / "profiled")
        result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
