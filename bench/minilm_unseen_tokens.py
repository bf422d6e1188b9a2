"""Where a compressed MiniLM loses fidelity on held-out sentences: per-sentence embedding cosine
against the share of the sentence's tokens that no calibration sentence holds.

    .venv/bin/python bench/minilm_unseen_tokens.py MODEL.onnx [--calib 1000] [--out F]

MODEL: a compressed MiniLM (e.g. recovery_bench.py --cache). Prints JSON: mean cosine per bin of
unseen-token share, their correlation, and the same model on its calibration sentences.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> int:
    import onnx_ir as ir

    from sparsec.bench import emit_json, machine_info
    from sparsec.eval.quality import _run_all, minilm_task

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--calib", type=int, default=1000)
    p.add_argument("--out")
    args = p.parse_args()
    task = minilm_task(n_calib=args.calib, n_eval=500)
    model = ir.load(args.model)

    def first(x):  # noqa: ANN001, ANN202
        return list(x.values())[0] if isinstance(x, dict) else x

    cos = cosines(first(_run_all(task.model, task.eval_feeds)), first(_run_all(model, task.eval_feeds)))
    cal = task.calib.arrays
    seen = set(cal["input_ids"][cal["attention_mask"] != 0].tolist())
    ids, mask = task.eval_feeds["input_ids"], task.eval_feeds["attention_mask"]
    unseen = np.array([np.mean([t not in seen for t in row[m != 0][1:-1]]) for row, m in zip(ids, mask, strict=True)])
    bins = []
    for lo, hi in [(0.0, 1e-9), (1e-9, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 1.01)]:
        sel = (unseen >= lo) & (unseen < hi)
        bins.append({"unseen_share": [lo, min(hi, 1.0)], "sentences": int(sel.sum()),
                     "mean_cosine": round(float(cos[sel].mean()), 5) if sel.any() else None})
    fit = {k: v[:500] for k, v in cal.items()}
    cal_cos = cosines(first(_run_all(task.model, fit)), first(_run_all(model, fit)))
    emit_json({"benchmark": "minilm_unseen_tokens", "model": os.path.abspath(args.model), "machine": machine_info(),
               "calibration_sentences": args.calib, "calibration_vocabulary": len(seen),
               "held_out_mean_cosine": round(float(cos.mean()), 5),
               "corr_cosine_unseen_share": round(float(np.corrcoef(cos, unseen)[0, 1]), 4),
               "bins": bins, "calibration_mean_cosine": round(float(cal_cos.mean()), 5)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
