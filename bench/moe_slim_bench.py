"""Existing MoE models bar: a Mixtral-style export (Hugging Face `MixtralModel` from a config,
random weights, TorchScript exporter, batched experts) compiled with expert pruning to half
the experts and with top-2 -> top-1; each artifact runs in ONNX Runtime and the manifest
holds the fidelity the compiler measured on held-out calibration samples. Prints JSON.

Random weights: the numbers show the mechanism (and what each choice costs on this model),
not the quality of slimming a trained Mixtral. Calibration data are random token ids.

    .venv/bin/python bench/moe_slim_bench.py [--layers 2] [--experts 8] [--hidden 64] [--form batched_mm|eager]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SEQ = 16


def export(path: Path, layers: int, experts: int, hidden: int, form: str) -> None:
    import torch
    import transformers as T

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    # Equal query and key/value heads: the TorchScript exporter cannot convert grouped-query SDPA.
    cfg = T.MixtralConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=4, num_local_experts=experts,
                          num_experts_per_tok=2, max_position_embeddings=64)
    inner = T.MixtralModel(cfg).eval()
    inner.set_experts_implementation(form)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids).last_hidden_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (torch.randint(0, 1000, (1, SEQ)),), str(path), dynamo=False,
                          opset_version=18, input_names=["ids"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--form", default="batched_mm", choices=("batched_mm", "eager"))
    ap.add_argument("--samples", type=int, default=96, help="calibration samples (a quarter held out for fidelity)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="moe_slim_"))
    model = folder / "mixtral.onnx"
    export(model, args.layers, args.experts, args.hidden, args.form)
    calib = folder / "calib.npz"
    np.savez(calib, ids=np.random.default_rng(1).integers(0, 1000, (args.samples, SEQ)).astype(np.int64))
    sparsec = str(Path(sys.executable).with_name("sparsec"))
    rows = []
    for spec in ("prune-experts:0.5", "merge-experts:0.5", "top-k:1", "prune-experts:0.5,top-k:1", "merge-experts:0.5,top-k:1"):
        out = folder / spec.replace(":", "_").replace(",", "+")
        t0 = time.perf_counter()
        done = subprocess.run([sparsec, "-q", "compile", str(model), f"--moe={spec}", "--sparsity=none", "--no-tune",
                               "--no-bench", "--calib", str(calib), "-o", str(out)], capture_output=True, text=True)
        if done.returncode:
            rows.append({"moe": spec, "error": done.stderr.strip().splitlines()[-1]})
            continue
        manifest = json.loads((out / "manifest.json").read_text())
        slim = [d for d in manifest["decisions"] if d["pass"] in ("prune-experts", "merge-experts", "moe-top-k") and "cosine" in d]
        rows.append({"moe": spec, "compile_s": round(time.perf_counter() - t0, 1),
                     "lifted_blocks": sum(d["decision"] == "lift" for d in manifest["decisions"]),
                     "fidelity": {k: manifest["fidelity"][k] for k in ("mean_cosine", "worst_cosine", "data", "samples")},
                     "layers": [{"pass": d["pass"], "decision": d["decision"], "block_cosine": d["cosine"]} for d in slim],
                     "kernel_ops": sorted({d["decision"] for d in manifest["decisions"] if d["pass"] == "lower-moe-kernels"}),
                     "model_bytes": (out / "model.onnx").stat().st_size + sum(p.stat().st_size for p in out.glob("*.data"))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"benchmark": "moe_slim_mixtral", "layers": args.layers, "experts": args.experts, "hidden": args.hidden,
                      "form": args.form, "dense_model_bytes": model.stat().st_size, "cpu": os.uname().machine,
                      "loadavg": [round(v, 2) for v in os.getloadavg()], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
