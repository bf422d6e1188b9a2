"""Model-level benchmark: ORT dense vs ORT + sparsec kernels, 2:4 on all linear layers.

Prints JSON. Cases:
- bert_base: the BERT-base-sized zoo encoder (12 layers, hidden 768, FFN 3072), batch 1,
  sequence 128;
- gpt_step: the GPT-2-small-sized zoo decoder running one generation step for batch 1 (one
  new token; no KV cache, so attention covers only that token: the step's cost is the
  linear layers and the LM head, as in cached decoding at short context).
- hf_gpt2_step: the same step on Hugging Face's `GPT2LMHeadModel(GPT2Config())` (GPT-2 small,
  seeded random weights: no hub here), exported by torch.onnx with default settings (opset
  18, static shapes): Conv1D layers as Gemm/MatMul+Add, the LM head tied to the embedding.

Each case goes through `sparsec.compile_model` (nm-sparsity + lower-nm-kernels + legalize
-dense), which measures fidelity against the dense model and times dense vs compiled side by
side (DESIGN.md §5). `--out DIR` also writes the artifacts.

    .venv/bin/python bench/model_bench.py [--cases bert_base,gpt_step] [--out out/models]
    .venv/bin/python bench/model_bench.py --cases gpt_step --pattern none --moe experts:16,active:0.25,method:weights,router:centroid
    .venv/bin/python bench/model_bench.py --cases gpt_step --pattern 2:4 --moe experts:16,active:0.25,method:weights,router:centroid  # + N:M experts
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import onnx_ir as ir

CASES = ("bert_base", "gpt_step", "hf_gpt2_step")


def capture(case: str) -> ir.Model:
    from sparsec.capture import from_torch
    from sparsec.models_zoo import export_ir, gpt

    if case == "bert_base":
        return export_ir("bert_base", batch=1, dynamic=False)
    if case == "gpt_step":
        import torch

        ids = torch.zeros((1, 1), dtype=torch.int64)
        return from_torch(gpt.build_gpt_small(), (ids,), input_names=("input_ids",),
                          output_names=("logits",), dynamic_batch=False)
    if case == "hf_gpt2_step":
        return _hf_gpt2_step()
    raise SystemExit(f"unknown case {case!r} (known: {', '.join(CASES)})")


def _hf_gpt2_step() -> ir.Model:
    import tempfile
    import warnings

    import torch
    import transformers

    from sparsec.ir.io import load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False, attn_implementation="eager")).eval()

    class Step(torch.nn.Module):  # ids in, logits out (no cache objects in the signature)
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm(ids, attention_mask=torch.ones_like(ids)).logits

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "gpt2_step.onnx"
        torch.onnx.export(Step().eval(), (torch.zeros((1, 1), dtype=torch.int64),), str(path), dynamo=False,
                          opset_version=18, input_names=["input_ids"], output_names=["logits"])
        return load_model(path)


def run_case(case: str, pattern: str, threads: int, out: Path | None, moe: str | None = None) -> dict:
    from sparsec.artifact import write_artifact
    from sparsec.compiler import CompileOptions, compile_model

    t0 = time.perf_counter()
    model = capture(case)
    capture_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = compile_model(model, CompileOptions(sparsity=pattern, threads=threads, fidelity_samples=2, moe=moe),
                           source=f"bench:{case}")
    compile_s = time.perf_counter() - t0
    if out is not None:
        write_artifact(out / case, result.files)
    m = result.manifest
    lat = m["latency"]
    kernel_pass = next((p for p in m["passes"] if p["pass"].startswith("lower-nm-kernels")), None)
    moe_ops = [d["decision"] for d in m["decisions"] if d.get("pass") == "lower-moe-kernels"]
    return {
        "case": case,
        "pattern": pattern,
        "moe": moe,
        "moe_layers": sum(1 for d in m["decisions"] if d.get("pass") == "moefy-ffn" and d["decision"].startswith("moe")),
        "moe_kernels": {k: moe_ops.count(k) for k in sorted(set(moe_ops))},
        "threads": threads,
        "dense_ms": lat["dense_ms"],
        "compiled_ms": lat["compiled_ms"],
        "speedup": lat["speedup"],
        "noise": lat.get("noise"),
        "dense_baseline": lat.get("baseline"),
        "runtime_settings": lat.get("compiled_settings"),
        "compiled_by_setting_ms": lat.get("compiled_by_setting_ms"),
        "dense": lat["dense"],
        "compiled": lat["compiled"],
        "fidelity": m["fidelity"],
        "layers_on_kernels": kernel_pass["stats"]["layers_lowered"] if kernel_pass else 0,
        "layers_kept_dense": kernel_pass["stats"]["layers_kept_dense"] if kernel_pass else None,
        "weight_bytes_dense": m["totals"]["weight_bytes_dense"],
        "weight_bytes_sparse": m["totals"]["weight_bytes_sparse"],
        "runtime_ops": m["runtime_ops"],
        "capture_s": round(capture_s, 2),
        "compile_s": round(compile_s, 2),
        "artifact": str(out / case) if out is not None else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the compiled artifacts here")
    parser.add_argument("--moe", help="also MoE-fy the FFNs, e.g. experts:16,active:0.25,method:weights,router:centroid "
                        "(data-free; --pattern none for MoE alone; a pattern applies to the experts too: packed MoEFFN)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from sparsec.bench import machine_info

    load_before = os.getloadavg()
    results = [run_case(c.strip(), args.pattern, args.threads, args.out, args.moe) for c in args.cases.split(",")]
    print(json.dumps({"command": " ".join(["bench/model_bench.py", *sys.argv[1:]]), "results": results,
                      "cpu": machine_info(), "load_before": load_before, "load_average": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
