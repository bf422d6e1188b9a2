"""TVM backend checks on this machine; prints JSON.

Modes (`--mode`, comma-separated):
- zoo: every zoo model (or --models) compiled 2:4 for `--backend=ort` and `--backend=tvm`
  (both with tuning off, so both prune and lower the same layers);
  both artifacts run on the same sample inputs; the bar is max|tvm - ort| / max|ort| <= 1e-4
  per output.
- gpt_step: GPT-2-small-sized zoo decoder, one decode step at batch 1 (as bench/model_bench.py):
  dense and 2:4 on TVM (same schedules), and dense and 2:4 on ORT, timed side by side.
- kernel: one N:M layer (768 -> 3072, batch-1 row, 2:4) as a one-op model, the same C kernel
  called from TVM (packed function in model.so) and from ORT (custom op).
- tir: the same 2:4 layer at 1x768 @ 768x3072 and 1x3072 @ 3072x768, built twice in TVM:
  the packed C kernel (default lowering) and the TIR PrimFunc (nm_lowering="tir",
  backends/tvm/nm_tir.py) on the same packed buffers, timed side by side in one process;
  also written to bench/results/tvm_nm_tir_vs_packed.json.

    .venv/bin/python bench/tvm_bench.py --mode zoo,gpt_step,kernel,tir [--models mlp,gpt]

Timings: median of blocked round-robin runs after warm-up (sparsec.bench.time_side_by_side),
2 threads for ORT, TVM's pool and the kernels. The JSON records CPU model, flags and load.
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

import numpy as np

from sparsec.bench import emit_json, machine_info


def _copy(model: Any) -> Any:
    from sparsec.ir.io import model_from_proto, to_proto

    return model_from_proto(to_proto(model))


def _compile(model: Any, backend: str, sparsity: str, threads: int, prune_all: bool = False) -> Any:
    """(compile result, runner). Tuning is off: the TVM backend prunes and lowers by the fixed
    thresholds (the tuner times ORT sessions), so the ORT build must too for both to compile
    the same graph. `prune_all`: every linear layer pruned."""
    from sparsec.backends.base import get_backend
    from sparsec.compiler import CompileOptions, compile_model

    result = compile_model(_copy(model), CompileOptions(backend=backend, sparsity=sparsity, bench=False,
                                                        fidelity_samples=1, threads=threads,
                                                        tune=False, prune_all=prune_all))
    return result, get_backend(backend).runner(result.compiled, threads)


def rel_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        scale = max(float(np.max(np.abs(r64))) if r64.size else 0.0, 1e-30)
        worst = max(worst, float(np.max(np.abs(g64 - r64))) / scale if r64.size else 0.0)
    return worst


def zoo(models: list[str], threads: int) -> list[dict[str, Any]]:
    from sparsec.capture import load_any
    from sparsec.numerics import sample_inputs

    rows = []
    for name in models:
        row: dict[str, Any] = {"model": name}
        try:
            model, _ = load_any(f"zoo:{name}")
            t0 = time.perf_counter()
            ort_result, run_ort = _compile(model, "ort", "2:4", threads)
            t1 = time.perf_counter()
            tvm_result, run_tvm = _compile(model, "tvm", "2:4", threads)
            t2 = time.perf_counter()
            errs = []
            for seed in (11, 12):
                feeds = sample_inputs(tvm_result.model, seed=seed)
                errs.append(rel_error(run_ort(feeds), run_tvm(feeds)))
            kernel = next((p for p in tvm_result.manifest["passes"] if p["pass"].startswith("lower-nm-kernels")), {})
            row.update({
                "max_rel_error_vs_ort": max(errs),
                "passes_1e-4": max(errs) <= 1e-4,
                "nm_layers_on_kernels": kernel.get("stats", {}).get("layers_lowered"),
                "ort_compile_s": round(t1 - t0, 1),
                "tvm_compile_s": round(t2 - t1, 1),
                "tvm_build": json.loads(tvm_result.files["tvm_signature.json"])["build"],
            })
        except Exception as e:  # report and go on: one model's failure is a result too
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _timing_row(timings: dict[str, Any]) -> dict[str, Any]:
    return {k: {"median_ms": round(v.median_ms, 4), **v.to_dict()} for k, v in timings.items()}


def gpt_step(threads: int, size: str = "small") -> dict[str, Any]:
    import torch

    from sparsec.bench import time_side_by_side
    from sparsec.capture import from_torch
    from sparsec.models_zoo import gpt
    from sparsec.numerics import sample_inputs

    ids = torch.zeros((1, 1), dtype=torch.int64)
    build = gpt.build_gpt_small if size == "small" else gpt.build_gpt  # "zoo": 4 layers, hidden 256
    model = from_torch(build(), (ids,), input_names=("input_ids",), output_names=("logits",),
                       dynamic_batch=False)
    runs = {}
    results = {}
    for backend in ("tvm", "ort"):
        for sparsity in ("none", "2:4"):
            key = f"{backend}_{'dense' if sparsity == 'none' else '2of4'}"
            results[key], runs[key] = _compile(model, backend, sparsity, threads, prune_all=True)
    feeds = sample_inputs(results["tvm_2of4"].model, seed=3)
    out = {k: r(feeds) for k, r in runs.items()}
    timings = time_side_by_side({k: (lambda r=r: r(feeds)) for k, r in runs.items()}, label="gpt step", budget_s=40)
    ms = {k: t.median_ms for k, t in timings.items()}
    return {
        "case": f"{'gpt2-small' if size == 'small' else 'zoo gpt (4 layers, hidden 256)'} decode step, batch 1, 2:4 on all linear layers",
        "options": "tune=False, prune_all=True on both backends (the same lowered graph: every linear layer 2:4 on the C kernels)",
        "timings": _timing_row(timings),
        "tvm_sparse_speedup_over_tvm_dense": round(ms["tvm_dense"] / ms["tvm_2of4"], 3),
        "tvm_2of4_over_ort_2of4": round(ms["tvm_2of4"] / ms["ort_2of4"], 3),
        "tvm_dense_over_ort_dense": round(ms["tvm_dense"] / ms["ort_dense"], 3),
        "rel_error_tvm_vs_ort_2of4": rel_error(out["ort_2of4"], out["tvm_2of4"]),
        "rel_error_tvm_vs_ort_dense": rel_error(out["ort_dense"], out["tvm_dense"]),
        "bars": {"sparse_vs_dense_tvm_ge_1.3": ms["tvm_dense"] / ms["tvm_2of4"] >= 1.3,
                 "tvm_within_1.5x_of_ort": ms["tvm_2of4"] <= 1.5 * ms["ort_2of4"]},
        "tvm_build_s": {k: json.loads(r.files["tvm_signature.json"])["build"] for k, r in results.items() if k.startswith("tvm")},
    }


def kernel(threads: int, k: int = 768, n: int = 3072, rows: int = 1) -> dict[str, Any]:
    from onnx import TensorProto, helper

    from sparsec.backends.ort.sparse_ops import nm_matmul_node
    from sparsec.backends.tvm.build import build_model
    from sparsec.backends.tvm.session import TvmSession
    from sparsec.backends.tvm.target_spec import host_spec
    from sparsec.bench import time_side_by_side
    from sparsec.runtime import make_session

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    groups = w.reshape(k // 4, 4, n)
    drop = np.argsort(np.abs(groups), axis=1)[:, :2, :]
    np.put_along_axis(groups, drop, 0.0, axis=1)
    node, inits = nm_matmul_node("x", "y", groups.reshape(k, n), 2, 4, "nm")
    graph = helper.make_graph([node], "nm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.sparsec.kernels", 1)])
    ort_session = make_session(proto.SerializeToString(), threads)
    built = build_model(proto, host_spec())
    import tvm

    files = {
        "model.so": built.library,
        "params.bin": bytes(tvm.runtime.save_param_dict({f"p{i}": tvm.runtime.tensor(p) for i, p in enumerate(built.params)})),
        "tvm_signature.json": json.dumps({"inputs": [{"name": "x", "shape": [rows, k], "dtype": "float32"}],
                                          "outputs": ["y"]}).encode(),
    }
    tvm_session = TvmSession(files, threads)
    feeds = {"x": rng.standard_normal((rows, k)).astype(np.float32)}
    err = rel_error(ort_session.run(None, feeds), tvm_session.run(feeds))
    timings = time_side_by_side({"ort": lambda: ort_session.run(None, feeds), "tvm": lambda: tvm_session.run(feeds)},
                                label="nm kernel")
    ratio = timings["tvm"].median_ms / timings["ort"].median_ms
    gbps = (built.params[0].nbytes + built.params[1].nbytes) / (timings["tvm"].median_ms * 1e-3) / 1e9
    return {"case": f"2:4 NMSparseMatMul {rows}x{k} @ {k}x{n}", "timings": _timing_row(timings),
            "tvm_over_ort": round(ratio, 3), "bar_within_1.2x": ratio <= 1.2, "rel_error": err,
            "tvm_packed_weight_GBps": round(gbps, 2)}


def _nm_model(k: int, n: int, rows: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """One 2:4 NMSparseMatMul as an ONNX model, and its dense (pruned) [k, n] weight."""
    from onnx import TensorProto, helper

    from sparsec.backends.ort.sparse_ops import nm_matmul_node
    from sparsec.kernels.packing_nm import prune_nm

    w = prune_nm(np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32), 2, 4)
    node, inits = nm_matmul_node("x", "y", w, 2, 4, "nm")
    graph = helper.make_graph([node], "nm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.sparsec.kernels", 1)]), w


def _tvm_session(proto: Any, rows: int, k: int, threads: int, nm_lowering: str) -> Any:
    import tvm

    from sparsec.backends.tvm.build import build_model
    from sparsec.backends.tvm.session import TvmSession
    from sparsec.backends.tvm.target_spec import host_spec

    built = build_model(proto, host_spec(), nm_lowering=nm_lowering)
    files = {
        "model.so": built.library,
        "params.bin": bytes(tvm.runtime.save_param_dict({f"p{i}": tvm.runtime.tensor(p) for i, p in enumerate(built.params)})),
        "tvm_signature.json": json.dumps({"inputs": [{"name": "x", "shape": [rows, k], "dtype": "float32"}],
                                          "outputs": ["y"]}).encode(),
    }
    return TvmSession(files, threads)


def tir_vs_packed(threads: int, shapes: tuple[tuple[int, int], ...] = ((768, 3072), (3072, 768)), rows: int = 1) -> dict[str, Any]:
    """2:4 layer as the packed C kernel vs the TIR PrimFunc, both in TVM, same packed buffers."""
    from sparsec.bench import time_side_by_side

    cases = []
    for k, n in shapes:
        proto, w = _nm_model(k, n, rows)
        sessions = {lowering: _tvm_session(proto, rows, k, threads, lowering) for lowering in ("packed", "tir")}
        feeds = {"x": np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)}
        ref = feeds["x"] @ w
        errors = {name: rel_error([ref], s.run(feeds)) for name, s in sessions.items()}
        load_before = os.getloadavg()
        timings = time_side_by_side({name: (lambda s=s, f=feeds: s.run(f)) for name, s in sessions.items()},
                                    min_runs=50, label=f"tir vs packed {k}x{n}")
        ms = {name: t.median_ms for name, t in timings.items()}
        cases.append({"case": f"2:4 NMSparseMatMul {rows}x{k} @ {k}x{n}", "timings": _timing_row(timings),
                      "tir_over_packed": round(ms["tir"] / ms["packed"], 3),
                      "faster": "tir" if ms["tir"] < ms["packed"] else "packed",
                      "rel_error_vs_dense": errors, "load_average_before": load_before,
                      "load_average_after": os.getloadavg()})
    return {"what": "TIR PrimFunc (nm_lowering=tir, backends/tvm/nm_tir.py: parallel over 16-column tiles, "
                    "16 lanes vectorized, local accumulator) vs the C kernel as packed function "
                    "(sparsec_nm_matmul, default), both in a TVM model.so run by TvmSession",
            "threads": threads, "cases": cases,
            "default_lowering": "tir" if all(c["faster"] == "tir" for c in cases) else "packed"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="kernel,gpt_step,zoo")
    parser.add_argument("--models", help="zoo models for --mode=zoo (default: every one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpt", choices=("small", "zoo"), default="small",
                        help="gpt_step model: GPT-2-small-sized (the bar; ~8 GB while building) or the zoo gpt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("SPARSEC_KERNEL_THREADS", str(args.threads))
    from sparsec.models_zoo import ZOO

    report: dict[str, Any] = {"machine": machine_info(python=platform.python_version()), "threads": args.threads}
    for mode in args.mode.split(","):
        if mode == "zoo":
            names = args.models.split(",") if args.models else list(ZOO)
            report["zoo"] = zoo(names, args.threads)
        elif mode == "gpt_step":
            report["gpt_step"] = gpt_step(args.threads, args.gpt)
        elif mode == "kernel":
            report["kernel"] = kernel(args.threads)
        elif mode == "tir":
            report["tir"] = tir_vs_packed(args.threads)
            out = Path(__file__).resolve().parent / "results" / "tvm_nm_tir_vs_packed.json"
            out.write_text(json.dumps({"machine": report["machine"], **report["tir"],
                                       "load_average_end": os.getloadavg()}, indent=2) + "\n")
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    report["load_average_end"] = os.getloadavg()
    emit_json(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
