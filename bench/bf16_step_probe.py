"""What bfloat16 autocast would buy the fine-tuning recovery: one training step's forward and
backward through the IR's torch module (`sparsec.recover.torch_graph.TorchGraph`) in float32
and under `torch.autocast("cpu", dtype=torch.bfloat16)`, side by side in one process.

    .venv/bin/python bench/bf16_step_probe.py MODEL.onnx [--batch 16] [--reps 5] [--out F]

MODEL: a token model (e.g. recovery_bench.py's `--cache` of the one-shot MiniLM); its inputs
get random token ids, an all-ones attention mask and zero type ids at the model's own sequence
length. The loss is a stand-in (mean square of the outputs): the point is the step's cost, not
its numerics, which this probe does not judge (bfloat16 keeps 8 bits of mantissa, while the
distillation signal is a few percent of the activations). Prints JSON with the machine.
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    import numpy as np
    import torch

    from sparsec.bench import emit_json, machine_info
    from sparsec.ir.io import load_model
    from sparsec.recover.torch_graph import TorchGraph

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.inputs:
        shape = [args.batch] + [int(d) for d in list(value.shape)[1:]]
        if "mask" in value.name:
            feeds[value.name] = np.ones(shape, np.int64)
        elif "type" in value.name:
            feeds[value.name] = np.zeros(shape, np.int64)
        else:
            feeds[value.name] = rng.integers(1000, 20000, shape).astype(np.int64)
    graph = TorchGraph(model)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs, _ = graph.run(feeds)
            loss = sum((o.float() ** 2).mean() for o in outputs)
        loss.backward()

    rounds = []
    for _ in range(2):  # interleaved: fp32, bf16, fp32, bf16
        for bf16 in (False, True):
            step(bf16)  # warm-up of this setting
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.reps):
                step(bf16)
            rounds.append({"dtype": "bfloat16 autocast" if bf16 else "float32",
                           "wall_s_per_step": round((time.perf_counter() - wall) / args.reps, 4),
                           "cpu_s_per_step": round((time.process_time() - cpu) / args.reps, 4)})
    fp32 = min(r["wall_s_per_step"] for r in rounds if r["dtype"] == "float32")
    bf16 = min(r["wall_s_per_step"] for r in rounds if r["dtype"] != "float32")
    emit_json({"bench": "bf16_step_probe", "model": args.model, "batch": args.batch, "threads": args.threads,
               "inputs": {k: list(v.shape) for k, v in feeds.items()}, "rounds": rounds,
               "bf16_speedup": round(fp32 / bf16, 3), "machine": machine_info()}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
