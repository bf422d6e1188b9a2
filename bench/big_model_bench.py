"""Compile a model bigger than comfortable memory and report peak RSS, time per stage, fidelity.

Builds a LLaMA-7B-width decoder stack (hidden 4096, FFN 11008 SwiGLU, 32 heads, RMSNorm,
fp32) offline from random weights, written as ONNX with external data (8 layers: ~6.4 GB;
`--layers 32`: ~26 GB, outside CI: it needs that much free disk and hours on 2 cores), then
runs `sparsec compile` on it in a child process under `/usr/bin/time -v` and prints JSON:

    python bench/big_model_bench.py --workdir /tmp/big --layers 8 [--criterion sparsegpt]
    python bench/big_model_bench.py --workdir /tmp/big --layers 32 --max-memory 8G   # outside CI
    python bench/big_model_bench.py --workdir /tmp/big --gpt2-small   # the issue's GPT-2-small bar

`--gpt2-small` compiles a Hugging Face GPT-2-small language model instead (GPT2Config defaults,
random weights, TorchScript exporter, opset 18, batch 1, 64 tokens: a 0.65 GB file whose LM
head is stored apart from the token embedding) and checks peak RSS against 1.5x the file + 1 GB.

The model and the artifact live under --workdir (never in the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN, FFN, HEADS = 4096, 11008, 32


class _Weights:
    """Writes random fp32 weights to one external-data file, tensor by tensor (never all in memory)."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.rng = np.random.default_rng(seed)
        self.offset = 0
        self.tensors: list[TensorProto] = []

    def add(self, name: str, shape: tuple[int, ...], scale: float, ones: bool = False) -> str:
        count = int(np.prod(shape))
        chunk = 1 << 24
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            data = np.ones(n, np.float32) if ones else (self.rng.standard_normal(n, dtype=np.float32) * np.float32(scale))
            self.file.write(data.astype(np.float32, copy=False).tobytes())
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(count * 4))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        self.offset += count * 4
        self.tensors.append(t)
        return name

    def close(self) -> None:
        self.file.close()


def build_stack(folder: Path, layers: int, seq: int, seed: int = 0) -> Path:
    """The decoder stack as `folder/stack.onnx` + `folder/stack.onnx.data`; returns the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "stack.onnx"
    weights = _Weights(folder / "stack.onnx.data", seed)
    nodes: list[onnx.NodeProto] = []
    consts = [
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / np.sqrt(HIDDEN // HEADS)]),
        helper.make_tensor("split_shape", TensorProto.INT64, [4], [1, seq, HEADS, HIDDEN // HEADS]),
        helper.make_tensor("merge_shape", TensorProto.INT64, [3], [1, seq, HIDDEN]),
    ]

    def rmsnorm(x: str, prefix: str) -> str:
        g = weights.add(f"{prefix}.weight", (HIDDEN,), 0.0, ones=True)
        nodes.extend([
            helper.make_node("Mul", [x, x], [f"{prefix}.sq"]),
            helper.make_node("ReduceMean", [f"{prefix}.sq"], [f"{prefix}.ms"], axes=[-1], keepdims=1),
            helper.make_node("Add", [f"{prefix}.ms", "eps"], [f"{prefix}.mse"]),
            helper.make_node("Sqrt", [f"{prefix}.mse"], [f"{prefix}.rms"]),
            helper.make_node("Div", [x, f"{prefix}.rms"], [f"{prefix}.n"]),
            helper.make_node("Mul", [f"{prefix}.n", g], [f"{prefix}.out"]),
        ])
        return f"{prefix}.out"

    def linear(x: str, name: str, k: int, n: int) -> str:
        w = weights.add(f"{name}.weight", (k, n), 1.0 / np.sqrt(k))
        nodes.append(helper.make_node("MatMul", [x, w], [f"{name}.out"], name=name))
        return f"{name}.out"

    def heads(x: str, name: str, perm: list[int]) -> str:
        nodes.extend([
            helper.make_node("Reshape", [x, "split_shape"], [f"{name}.split"]),
            helper.make_node("Transpose", [f"{name}.split"], [f"{name}.t"], perm=perm),
        ])
        return f"{name}.t"

    x = "hidden"
    for i in range(layers):
        p = f"layers.{i}"
        n1 = rmsnorm(x, f"{p}.input_norm")
        q = heads(linear(n1, f"{p}.attn.q_proj", HIDDEN, HIDDEN), f"{p}.q", [0, 2, 1, 3])
        k = heads(linear(n1, f"{p}.attn.k_proj", HIDDEN, HIDDEN), f"{p}.k", [0, 2, 3, 1])
        v = heads(linear(n1, f"{p}.attn.v_proj", HIDDEN, HIDDEN), f"{p}.v", [0, 2, 1, 3])
        nodes.extend([
            helper.make_node("MatMul", [q, k], [f"{p}.scores"]),
            helper.make_node("Mul", [f"{p}.scores", "scale"], [f"{p}.scaled"]),
            helper.make_node("Softmax", [f"{p}.scaled"], [f"{p}.probs"], axis=-1),
            helper.make_node("MatMul", [f"{p}.probs", v], [f"{p}.ctx"]),
            helper.make_node("Transpose", [f"{p}.ctx"], [f"{p}.ctx_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{p}.ctx_t", "merge_shape"], [f"{p}.merged"]),
        ])
        o = linear(f"{p}.merged", f"{p}.attn.o_proj", HIDDEN, HIDDEN)
        nodes.append(helper.make_node("Add", [x, o], [f"{p}.res1"]))
        n2 = rmsnorm(f"{p}.res1", f"{p}.post_norm")
        gate = linear(n2, f"{p}.mlp.gate_proj", HIDDEN, FFN)
        up = linear(n2, f"{p}.mlp.up_proj", HIDDEN, FFN)
        nodes.extend([
            helper.make_node("Sigmoid", [gate], [f"{p}.sig"]),
            helper.make_node("Mul", [gate, f"{p}.sig"], [f"{p}.silu"]),
            helper.make_node("Mul", [f"{p}.silu", up], [f"{p}.act"]),
        ])
        down = linear(f"{p}.act", f"{p}.mlp.down_proj", FFN, HIDDEN)
        nodes.append(helper.make_node("Add", [f"{p}.res1", down], [f"{p}.out"]))
        x = f"{p}.out"
    out = rmsnorm(x, "final_norm")
    nodes.append(helper.make_node("Identity", [out], ["output"]))
    weights.close()
    graph = helper.make_graph(
        nodes, "llama_width_stack",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, seq, HIDDEN])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, seq, HIDDEN])],
        consts + weights.tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="big_model_bench")
    model.ir_version = 8
    onnx.save_model(model, model_path)
    return model_path


def build_gpt2_small(folder: Path, seq: int = 64) -> Path:
    """A GPT-2-small LM export, as a user would make it with default settings (offline: random weights)."""
    import torch
    import transformers as tr

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpt2_small.onnx"
    torch.manual_seed(0)
    model = tr.GPT2LMHeadModel(tr.GPT2Config(use_cache=False)).eval()
    ids = torch.randint(0, 50257, (1, seq))
    with torch.no_grad():
        torch.onnx.export(model, (ids,), str(path), kwargs={"attention_mask": torch.ones_like(ids)}, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=18, dynamo=False)
    return path


def calibration(folder: Path, samples: int, seq: int, seed: int = 1) -> Path:
    path = folder / f"calib_{samples}x{seq}.npz"
    rng = np.random.default_rng(seed)
    np.savez(path, hidden=rng.standard_normal((samples, seq, HIDDEN), dtype=np.float32))
    return path


def machine() -> dict:
    info: dict = {"python": platform.python_version(), "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Flags"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sparsec-big-model"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--criterion", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--samples", type=int, default=16, help="calibration samples (data criteria)")
    ap.add_argument("--max-memory", default=None, help="passed to sparsec compile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rebuild", action="store_true", help="write the model again even if it exists")
    ap.add_argument("--gpt2-small", action="store_true", help="compile a GPT-2-small export instead of the stack")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more sparsec compile flags")
    args = ap.parse_args(argv)

    folder = args.workdir / ("gpt2_small" if args.gpt2_small else f"stack{args.layers}")
    model = folder / ("gpt2_small.onnx" if args.gpt2_small else "stack.onnx")
    built_s = 0.0
    if args.rebuild or not model.exists():
        start = time.perf_counter()
        if args.gpt2_small:
            build_gpt2_small(folder)
        else:
            build_stack(folder, args.layers, args.seq)
        built_s = time.perf_counter() - start
    out = args.workdir / (f"out_gpt2_small_{args.criterion}" if args.gpt2_small else f"out{args.layers}_{args.criterion}")
    cmd = [sys.executable, "-m", "sparsec.cli", "compile", str(model), "-o", str(out), "--force",
           "--sparsity=2:4", f"--criterion={args.criterion}", "--no-bench", f"--threads={args.threads}"]
    if args.criterion != "magnitude" and not args.gpt2_small:
        cmd.append(f"--calib={calibration(folder, args.samples, args.seq)}")
    if args.max_memory:
        cmd.append(f"--max-memory={args.max_memory}")
    cmd += args.extra
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    file_bytes = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(model.name))
    result: dict = {
        "bench": "big_model_bench",
        "model": ({"path": str(model), "kind": "GPT-2-small LM (GPT2Config defaults), opset 18, 1x64 tokens"}
                  if args.gpt2_small else
                  {"path": str(model), "layers": args.layers, "hidden": HIDDEN, "ffn": FFN, "seq": args.seq}),
        "model_file_bytes": file_bytes,
        "build_s": round(built_s, 1),
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_bytes": int(peak_kb.group(1)) * 1024 if peak_kb else None,
        "machine": machine(),
        "threads": args.threads,
    }
    if args.gpt2_small and result["peak_rss_bytes"]:
        limit = 1.5 * file_bytes + 1e9  # 1 GB read strictly as 1e9 bytes
        result["bar"] = {"peak_rss_limit_bytes": int(limit), "met": result["peak_rss_bytes"] <= limit,
                         "rule": "peak RSS <= 1.5 x model file + 1e9 bytes"}
    manifest = out / "manifest.json"
    if proc.returncode in (0, 3) and manifest.exists():
        data = json.loads(manifest.read_text())
        result["passes_s"] = {p["pass"].split("{")[0]: p["seconds"] for p in data.get("passes", [])}
        result["fidelity"] = {k: data["fidelity"].get(k) for k in ("mean_cosine", "worst_cosine", "summary")}
        result["memory"] = data.get("memory")
        result["latency"] = data.get("latency")
    else:
        result["stderr_tail"] = proc.stderr[-3000:]
    print(json.dumps(result, indent=2))
    return 0 if proc.returncode in (0, 3) else 1


if __name__ == "__main__":
    sys.exit(main())
