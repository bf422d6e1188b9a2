"""How the latency protocol's block length changes a dense-vs-compiled verdict.

Compiles a zoo model (default: the demo's digits_mlp) with `--no-bench`, builds the four
sessions the compile's own check builds (dense ORT with and without spinning, the compiled
model with each setting) and times them with `sparsec.bench.compare_interleaved` three ways:
blocks of 4 calls with the first discarded (the protocol before this file), blocks sized to
>= 20 ms with the first quarter discarded (the current default), and fixed blocks of 16.
Prints JSON with the CPU, load average and each variant's medians.

    .venv/bin/python bench/latency_protocol_bench.py [--model digits_mlp] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnxruntime as ort

from sparsec.bench import compare_interleaved, emit_json, machine_info
from sparsec.compiler import CompileOptions, compile_file
from sparsec.ir.io import load_model
from sparsec.numerics import sample_inputs
from sparsec.runtime import plain_session_options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_mlp", help="zoo model name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per variant")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    from sparsec.backends.ort.sparse_ops import make_session, session_options
    from sparsec.models_zoo.export import export_onnx

    with tempfile.TemporaryDirectory() as work:
        dense_path = Path(work) / "dense.onnx"
        export_onnx(args.model, dense_path)
        compile_file(f"zoo:{args.model}", Path(work) / "art", CompileOptions(sparsity="2:4", bench=False, threads=args.threads))
        dense = dense_path.read_bytes()
        compiled = (Path(work) / "art" / "model.onnx").read_bytes()
        feeds = sample_inputs(load_model(dense_path))
    sessions = {
        f"dense spin={spin}": ort.InferenceSession(dense, plain_session_options(args.threads, allow_spinning=spin),
                                                   providers=["CPUExecutionProvider"])
        for spin in (True, False)
    } | {
        f"compiled spin={spin}": make_session(compiled, threads=args.threads, options=session_options(args.threads, None, spin))
        for spin in (True, False)
    }
    fns = {k: (lambda sess: lambda: sess.run(None, feeds))(s) for k, s in sessions.items()}
    result = {"bench": "latency_protocol_blocks", "model": f"zoo:{args.model}, dense vs its --sparsity=2:4 compile",
              "command": f"python bench/latency_protocol_bench.py --model {args.model} --threads {args.threads} --budget {args.budget}",
              "machine": machine_info(), "threads": args.threads, "load_average_before": list(os.getloadavg()), "variants": {}}
    for tag, kw in (("block 4, first call discarded (old default)", {"block": 4}),
                    ("blocks >= 20 ms, first quarter discarded (default)", {}),
                    ("block 16, first 4 discarded", {"block": 16})):
        r = compare_interleaved("dense spin=True", fns, budget_s=args.budget, min_rounds=7, max_rounds=100, label=tag, **kw)
        med = {k: round(v.median_ms, 4) for k, v in r.timings.items()}
        dense_ms = min(med["dense spin=True"], med["dense spin=False"])
        comp_ms = min(med["compiled spin=True"], med["compiled spin=False"])
        result["variants"][tag] = {"median_ms": med, "p10_p90_ms": {k: [round(v.p10_ms, 4), round(v.p90_ms, 4)] for k, v in r.timings.items()},
                                   "rounds": r.rounds, "speedup": round(dense_ms / comp_ms, 3)}
    result["load_average_after"] = list(os.getloadavg())
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
