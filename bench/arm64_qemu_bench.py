"""--target=arm64 sanity check: aarch64 builds run under qemu user emulation, checked against x86.

For each model (the zoo's digits CNN, a tiny Hugging Face BERT): compile with `--target=arm64
--backend=tvm` (2:4), build the dense model with TVM for aarch64 as well, and run under qemu:
  - the TVM libraries (dense; sparse with the NEON N:M kernels linked in),
  - aarch64 ONNX Runtime on the dense ONNX model and on the compiled one with the aarch64
    kernel op library (the `ort` backend's deployment),
on the same inputs. Outputs are compared with x86 ONNX Runtime (dense model; compiled model with
the x86 kernels). Times are qemu wall time per call (median of --repeat): EMULATED, a sanity
check only, never a speed claim. Prints JSON (and writes it with --out).

    .venv/bin/python bench/arm64_qemu_bench.py [--repeat 5] [--out bench/results/arm64_qemu.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> dict:
    info = {"machine": platform.machine(), "cpu": platform.processor()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() == "Flags":
                info["flags"] = value.split()
    except OSError:
        pass
    from sparsec.kernels import cross_build

    q = subprocess.run([cross_build.qemu(), "--version"], capture_output=True, text=True)
    info["qemu"] = q.stdout.splitlines()[0] if q.stdout else cross_build.qemu()
    return info


def load(name: str, folder: Path):  # -> (spec, feeds builder)
    if name == "digits_cnn":
        return "zoo:digits_cnn"
    import onnx

    from sparsec.models_zoo.hf_tiny_bert import export_tiny_bert

    path = folder / "tiny_bert.onnx"
    onnx.save(export_tiny_bert(hidden=128), path)
    return str(path)


def feeds_for(inputs, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in inputs:
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "int64" in i.type:
            feeds[i.name] = (rng.integers(0, 100, shape) if "ids" in i.name else np.ones(shape)).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def err(got: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
    g, r = got[0].astype(np.float64).ravel(), ref[0].astype(np.float64).ravel()
    return {"max_abs": float(np.abs(g - r).max()), "max_rel": float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)),
            "cosine": float(g @ r / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))}


def bench_model(name: str, work: Path, repeat: int) -> dict:
    import onnx

    from sparsec.backends.ort_arm64.emulated import emulated_session
    from sparsec.backends.tvm_arm64.emulated import emulated_library
    from sparsec.backends.tvm_arm64.library import build_library
    from sparsec.backends.tvm_arm64.relax_import import to_relax
    from sparsec.capture import load_any
    from sparsec.compiler import CompileOptions, compile_model
    from sparsec.ir.io import to_proto
    from sparsec.kernels import cross_build
    from sparsec.runtime import InferenceSession, make_session

    spec = load(name, work)
    model, source = load_any(spec)
    dense_proto = copy.deepcopy(to_proto(model))
    dense_path = work / f"{name}_dense.onnx"
    onnx.save(dense_proto, dense_path)

    t0 = time.perf_counter()
    result = compile_model(model, CompileOptions(target="arm64", backend="tvm", fidelity_samples=1), source=str(source))
    compile_s = time.perf_counter() - t0
    art = work / f"{name}_tvm"
    art.mkdir()
    for fname, data in result.files.items():
        (art / fname).write_bytes(data)
    dense_so = work / f"{name}_dense.so"
    dense_build = build_library(to_relax(dense_proto), dense_so)

    x86_dense = make_session(dense_proto.SerializeToString(), 2)
    x86_sparse = InferenceSession(art)
    inputs = x86_sparse.get_inputs()
    names = [i.name for i in inputs]
    outputs = [o.name for o in x86_sparse.get_outputs()]
    feeds = feeds_for(inputs, seed=11)
    ref_dense = x86_dense.run(None, feeds)
    ref_sparse = x86_sparse.run(None, feeds)
    args = [feeds[n] for n in names]

    runs = {}
    with emulated_library(dense_so) as lib:
        out, med, fastest = lib.run(args, repeat=repeat)
        runs["tvm_dense"] = {"emulated_median_ms": med, "emulated_min_ms": fastest, "vs_x86_dense_ort": err(out, ref_dense)}
    with emulated_library(art / "model.so") as lib:
        out, med, fastest = lib.run(args, repeat=repeat)
        runs["tvm_sparse"] = {"emulated_median_ms": med, "emulated_min_ms": fastest,
                              "vs_x86_compiled_ort": err(out, ref_sparse), "vs_x86_dense_ort": err(out, ref_dense)}
    with emulated_session(dense_path, None, names, outputs) as ort_arm:
        out, med, fastest = ort_arm.run(args, repeat=repeat)
        runs["ort_dense"] = {"emulated_median_ms": med, "emulated_min_ms": fastest, "vs_x86_dense_ort": err(out, ref_dense)}
    with emulated_session(art / "model.onnx", cross_build.kernel_library(), names, outputs) as ort_arm:
        out, med, fastest = ort_arm.run(args, repeat=repeat)
        runs["ort_sparse_kernels"] = {"emulated_median_ms": med, "emulated_min_ms": fastest,
                                      "vs_x86_compiled_ort": err(out, ref_sparse)}
    build = json.loads(result.files["tvm_build.json"])
    return {
        "model": name,
        "input_shapes": {n: list(feeds[n].shape) for n in names},
        "sparsity": "2:4 (magnitude), N:M layers on the NEON kernels: " + str(build["kernel_layers"]),
        "fidelity_manifest": {k: result.manifest["fidelity"][k] for k in ("mean_cosine", "worst_cosine", "data")},
        "compile_s": round(compile_s, 2),
        "tvm_build": {"sparse": {k: build[k] for k in ("tvm_build_s", "link_s")}, "dense": dense_build},
        "runs": runs,
        "emulated_ratio_tvm_dense_over_sparse": round(runs["tvm_dense"]["emulated_median_ms"] / runs["tvm_sparse"]["emulated_median_ms"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits_cnn,tiny_bert")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        results = [bench_model(m, Path(d), a.repeat) for m in a.models.split(",")]
    doc = {
        "what": "aarch64 builds under qemu-aarch64 user emulation vs x86 ONNX Runtime",
        "timing_note": "EMULATED wall time under qemu on an x86 host: a sanity check, not a speed claim",
        "machine": machine(),
        "threads": {"ort": 2, "tvm": "TVM runtime default"},
        "repeat": a.repeat,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
