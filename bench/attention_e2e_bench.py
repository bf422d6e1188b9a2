"""End-to-end sparse attention bar (issue 11): a zoo GPT decoder at a 4096-token prefill,
compiled with a static local+sinks layout at ~10% of the causal blocks, vs dense ORT.

Prints one JSON document (and writes it with --out). One process, 2 threads everywhere:
- the zoo model (default `gpt_long`) is exported once, batch 1 (a prefill);
- dense: ONNX Runtime's CPU provider on that exported graph, with its pool spinning (ORT's
  default) and without, as the compile's own latency check runs it, and the zoo module in
  torch eager (DESIGN.md: if torch is faster, beat it); the fastest one counts;
- sparse: the real compile path, `compile_model` with the CLI's preset
  (`--attention=LAYOUT --sparsity=none`; optionally a second artifact with `--nm 2:4` too),
  written as an artifact and loaded by `sparsec.runtime.InferenceSession`. The artifact must
  run every attention block on the fused kernel op (com.sparsec.kernels.SparseAttention),
  checked before timing; the measured density comes from the manifest's layout decisions;
- timing: `sparsec.bench.compare_interleaved` (the compile's protocol: interleaved blocks,
  order alternating, first quarter of each block discarded, medians, paired noise), at least
  `--runs` rounds; `--block` calls per block (default: the protocol's own, >= 4 per block);
- fidelity of the logits vs dense on the zoo's example input: cosine, max abs, top-1 agreement.
The compile's own latency run is off (`bench=False`): this script is that measurement, and at
S=4096 a second one would double the run time. `uptime` load averages go in the JSON.

    .venv/bin/python bench/attention_e2e_bench.py [--layout local:128,sinks:64] [--runs 5] \
        [--nm 2:4] [--out bench/results/attention_e2e.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from sparsec.artifact import write_artifact
from sparsec.bench import compare_interleaved, emit_json, machine_info, paired_noise
from sparsec.calib.metrics import compare
from sparsec.compiler import CompileOptions, compile_model
from sparsec.dialect import DOMAIN
from sparsec.ir.io import model_bytes
from sparsec.models_zoo import get
from sparsec.models_zoo.export import export_ir
from sparsec.pm.presets import preset_pipeline
from sparsec.runtime import KERNEL_DOMAIN, InferenceSession, plain_session_options

THREADS = 2
DENSE_SPIN, DENSE_NOSPIN = "dense ORT (spinning, default)", "dense ORT (spinning off)"
DENSE_TORCH = "dense torch (eager, the zoo module)"


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def compile_variant(dense: ir.Model, layout: str, nm: str | None, out: Path) -> dict[str, Any]:
    """Compile a copy of `dense` through the CLI's preset (`--attention=layout --sparsity=nm|none`),
    write the artifact to `out` and check that every attention block runs on the kernel op."""
    model = dense.clone()  # the compile rewrites its model in place; weights are shared, never written
    pipeline = preset_pipeline(target="cpu", sparsity=nm or "none", attention=layout)
    t0 = time.perf_counter()
    result = compile_model(model, CompileOptions(pipeline=pipeline, bench=False, threads=THREADS,
                                                 fidelity_samples=1), source="zoo")
    compile_s = time.perf_counter() - t0
    write_artifact(out, result.files)
    decisions = result.manifest["decisions"]
    layouts = [d for d in decisions if d.get("pass") == "sparse-attention"]
    # How each block's mask was read and whether it stays as the kernel's bias input (the pass's statistics).
    rewritten = next(r.stats["rewritten"] for r in result.records if r.name == "sparse-attention")
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    kernels = [n for n in graph.node if (n.domain, n.op_type) == (KERNEL_DOMAIN, "SparseAttention")]
    left = [n.name for n in graph.node if n.domain == DOMAIN]
    if not layouts or len(kernels) != len(layouts) or left:
        raise SystemExit(f"{out}: {len(layouts)} attention block(s) rewritten but {len(kernels)} on the kernel op, "
                         f"{len(left)} dialect op(s) left on their reference lowering: the bar's path is broken")
    nm_layers = [d for d in decisions if d.get("pass") == "lower-nm-kernels" and "kernel" in str(d.get("decision", ""))]
    return {
        "pipeline": str(pipeline),
        "compile_s": round(compile_s, 1),
        "attention_blocks": len(layouts),
        "attention_on_kernel_op": len(kernels),
        # density: the fraction of the causal block pairs the layout keeps (the manifest's per-block record)
        "density_per_block": [d["density"] for d in layouts],
        "density": round(float(np.mean([d["density"] for d in layouts])), 4),
        "layout": {k: layouts[0].get(k) for k in ("block", "causal", "heads", "local_blocks", "sink_blocks")},
        "masks": [{"read": b["mask"], "kept_as_bias": b["bias_kept"]} for b in rewritten],
        "nm_kernel_layers": len(nm_layers),
        "manifest_fidelity": result.manifest.get("fidelity"),
        "verdict": result.manifest.get("verdict", {}).get("status"),
    }


def torch_runner(entry: Any, ids: np.ndarray) -> Callable[[], np.ndarray]:
    """The zoo module itself in torch eager on THREADS threads (the same explicit attention)."""
    import torch

    torch.set_num_threads(THREADS)
    module, x = entry.build(), torch.from_numpy(ids)

    def run() -> np.ndarray:
        with torch.inference_mode():
            return module(x).numpy()

    return run


def flops(cfg: Any, density: float | None) -> float:
    """Useful FLOPs of one prefill: the linear layers plus causal attention (QK^T and PV) over
    the kept fraction of causal blocks (`density`; None: the whole causal half)."""
    s, h, layers = cfg.seq_len, cfg.hidden, cfg.n_layers
    linear = 2.0 * s * (layers * (4 * h * h + 2 * h * cfg.ffn) + h * cfg.vocab_size)
    causal = layers * 4.0 * h * s * (s + 1) / 2
    return linear + causal * (1.0 if density is None else density)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt_long", help="zoo model (a causal decoder)")
    parser.add_argument("--layout", default="local:128,sinks:64",
                        help="--attention layout; default at block 64: local 2 + 1 sink block = 9.1%% of the "
                             "causal blocks at S=4096")
    parser.add_argument("--nm", default=None, help="also compile a variant with --sparsity=NM (e.g. 2:4)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (at least)")
    parser.add_argument("--block", type=int, default=None,
                        help="calls per block (default: the protocol's, >= 4; each block's first quarter is dropped)")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds of rounds beyond --runs (0: just --runs)")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the torch eager baseline (DESIGN.md: beat torch too if it is faster)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    entry = get(args.model)
    from sparsec.models_zoo import gpt

    cfg = {"gpt_long": gpt.LONG, "gpt": gpt.SMALL, "gpt_small": gpt.GPT_SMALL}.get(args.model)
    result: dict[str, Any] = {"model": args.model, "description": entry.description, "threads": THREADS,
                              "cpu": machine_info(), "load_before": _load()}
    t0 = time.perf_counter()
    dense_ir = export_ir(args.model, batch=1, dynamic=False)
    dense_bytes = model_bytes(dense_ir)
    result["export_s"] = round(time.perf_counter() - t0, 1)
    ids = entry.example_inputs(1)[0].numpy()
    feeds = {entry.input_names[0]: ids}
    result["input"] = {"shape": list(ids.shape), "what": "the zoo's example token ids (uniform over the vocabulary)"}

    variants = {f"attention {args.layout}": None}
    if args.nm:
        variants[f"attention {args.layout} + {args.nm}"] = args.nm
    fns: dict[str, Callable[[], Any]] = {}
    for spin, name in ((True, DENSE_SPIN), (False, DENSE_NOSPIN)):
        session = ort.InferenceSession(dense_bytes, plain_session_options(THREADS, allow_spinning=spin),
                                       providers=["CPUExecutionProvider"])
        fns[name] = (lambda s: lambda: s.run(None, feeds))(session)
    dense_out = fns[DENSE_SPIN]()
    if not args.no_torch:
        fns[DENSE_TORCH] = torch_runner(entry, ids)
        result["torch_vs_ort_dense_max_abs"] = float(np.abs(fns[DENSE_TORCH]() - dense_out[0]).max())
    result["variants"] = {}
    with tempfile.TemporaryDirectory(prefix="attention-e2e-") as tmp:  # sessions hold the models once loaded
        for i, (name, nm) in enumerate(variants.items()):
            folder = Path(tmp) / f"v{i}"
            info = compile_variant(dense_ir, args.layout, nm, folder)
            session = InferenceSession(folder, threads=THREADS)
            fns[name] = (lambda s: lambda: s.run(None, feeds))(session)
            out = fns[name]()
            fid = compare(dense_out, out)
            top1 = float(np.mean(dense_out[0].argmax(-1) == out[0].argmax(-1)))
            info["fidelity_vs_dense"] = {"logits_mean_cosine": round(fid.mean_cosine, 6),
                                         "logits_worst_cosine": round(fid.worst_cosine, 6),
                                         "max_abs": float(fid.max_abs), "rel_l2": round(fid.rel_l2, 6),
                                         "top1_agreement": round(top1, 4)}
            result["variants"][name] = info

    result["load_before_timing"] = _load()
    cmp = compare_interleaved(DENSE_SPIN, fns, budget_s=args.budget, min_rounds=args.runs, max_rounds=max(args.runs, 100),
                              block=args.block, label="dense vs sparse attention")
    t = cmp.timings
    best_dense = min((n for n in (DENSE_SPIN, DENSE_NOSPIN, DENSE_TORCH) if n in t), key=lambda n: t[n].median_ms)
    dense_ms = t[best_dense].median_ms
    result["timing"] = {
        "protocol": "sparsec.bench.compare_interleaved: interleaved blocks, order alternating each round, pause "
                    "before each block, first quarter of each block discarded, medians",
        "rounds": cmp.rounds, "block_calls": args.block or "protocol default (>= 4)",
        "ms": {n: t[n].to_dict() for n in fns},
        "dense_baseline": best_dense,
        "dense_gflops": round(flops(cfg, None) / dense_ms / 1e6, 1) if cfg else None,
    }
    bars = {}
    for name, info in result["variants"].items():
        speedup = dense_ms / t[name].median_ms
        info["ms"] = round(t[name].median_ms, 2)
        info["speedup_vs_dense"] = round(speedup, 2)
        info["noise"] = round(paired_noise(cmp, best_dense, name), 4)
        if cfg:
            info["effective_gflops"] = round(flops(cfg, info["density"]) / t[name].median_ms / 1e6, 1)
        bars[name] = {"speedup": round(speedup, 2), "needs": 3.0, "met": speedup >= 3.0,
                      "density": info["density"]}
    result["bars"] = bars
    result["load_after"] = _load()
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
