"""N:M channel permutations before one-shot 2:4 on the real MiniLM: do they help? (issue 15)

Pool & Yu (2021) permute a layer's input channels so that each group of M keeps more of the
weights' saliency. In a transformer some permutations are free: the FFN hidden channels
(intermediate.dense rows and bias, output.dense columns; GELU is per channel) and each head's
value dims (value rows and bias, attention.output.dense columns). This experiment permutes both
to maximise the magnitude kept under 2:4 (random group pairs, the best of their 16 swaps),
checks the permuted model is the same function, prunes with the compiler's own nm-sparsity
(1000 calibration sentences) and reports held-out fidelity against the unpermuted run.
Not a pass: the result decides whether it should become one. Prints JSON.

    .venv/bin/python bench/nm_permutation_experiment.py [--criteria magnitude,sparsegpt] [--out F]
"""
import argparse
import os
import sys
import time

import numpy as np
import onnx_ir as ir
import torch

from sparsec.bench import emit_json, machine_info
from sparsec.eval.quality import _embedding_metrics, _run_all, minilm_task
from sparsec.pm import PassContext, PassManager, parse_pipeline

rng = np.random.default_rng(0)

def top2(g: np.ndarray) -> np.ndarray:  # g [..., 4] -> sum of the two largest
    s = np.sort(g, axis=-1)
    return s[..., -1] + s[..., -2]

def perm_for(score: np.ndarray, iters: int = 20000) -> tuple[np.ndarray, float, float]:
    """score [rows, K] (saliency of weight of input k in row): a permutation of K maximising the
    kept saliency under 2:4 groups of consecutive inputs. Random group pairs, best of 16 swaps."""
    rows, K = score.shape
    G = K // 4
    perm = np.arange(K)
    cur = score.reshape(rows, G, 4).transpose(1, 0, 2).copy()  # [G, rows, 4]
    val = top2(cur).sum(1)  # [G]
    before = val.sum()
    for _ in range(iters):
        a, b = rng.choice(G, 2, replace=False)
        A, B = cur[a], cur[b]  # [rows, 4]
        # all 16 swaps: A with column i replaced by B[:, j]
        An = np.repeat(A[None], 16, 0).reshape(4, 4, rows, 4)
        Bn = np.repeat(B[None], 16, 0).reshape(4, 4, rows, 4)
        for i in range(4):
            for j in range(4):
                An[i, j, :, i] = B[:, j]
                Bn[i, j, :, j] = A[:, i]
        gain = top2(An).sum(-1) + top2(Bn).sum(-1) - val[a] - val[b]
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[i, j] > 1e-9:
            ta, tb = cur[a][:, i].copy(), cur[b][:, j].copy()
            cur[a][:, i], cur[b][:, j] = tb, ta
            pa, pb = perm[a * 4 + i], perm[b * 4 + j]
            perm[a * 4 + i], perm[b * 4 + j] = pb, pa
            val[a], val[b] = top2(cur[a]).sum(), top2(cur[b]).sum()
    return perm, before, val.sum()

def apply_perms(model: ir.Model, mode: str) -> list[tuple[str, int, float]]:
    inits = model.graph.initializers
    stats = []
    for layer in range(6):
        p = f"bert.encoder.layer.{layer}."
        if "ffn" in mode:
            w1, b1, w2 = (inits[p + n] for n in ("intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight"))
            W2 = w2.const_value.numpy()  # [384 out, 1536 in]
            perm, bef, aft = perm_for(np.abs(W2), 6000)
            stats.append(("ffn", layer, float(aft / bef)))
            w1.const_value = ir.tensor(np.ascontiguousarray(w1.const_value.numpy()[perm]), name=w1.name)
            b1.const_value = ir.tensor(np.ascontiguousarray(b1.const_value.numpy()[perm]), name=b1.name)
            w2.const_value = ir.tensor(np.ascontiguousarray(W2[:, perm]), name=w2.name)
        if "head" in mode:
            wv, bv, wo = (inits[p + n] for n in ("attention.self.value.weight", "attention.self.value.bias", "attention.output.dense.weight"))
            WO = wo.const_value.numpy()  # [384 out, 384 in (12 heads x 32)]
            full = np.arange(384)
            bef_t = aft_t = 0.0
            for h in range(12):
                sl = slice(h * 32, h * 32 + 32)
                perm, bef, aft = perm_for(np.abs(WO[:, sl]), 1500)
                full[sl] = h * 32 + perm
                bef_t += bef
                aft_t += aft
            stats.append(("head", layer, float(aft_t / bef_t)))
            wv.const_value = ir.tensor(np.ascontiguousarray(wv.const_value.numpy()[full]), name=wv.name)
            bv.const_value = ir.tensor(np.ascontiguousarray(bv.const_value.numpy()[full]), name=bv.name)
            wo.const_value = ir.tensor(np.ascontiguousarray(WO[:, full]), name=wo.name)
    return stats



def run(task: object, dense: np.ndarray, mode: str, criterion: str) -> dict:
    model = task.model.clone()
    t = time.time()
    stats = apply_perms(model, mode) if mode != "none" else []
    tp = time.time() - t
    same = _embedding_metrics(dense, _run_all(model, task.eval_feeds))  # the permutation is exact
    t = time.time()
    PassManager(parse_pipeline(f"nm-sparsity{{n=2 m=4 criterion={criterion} min_params=1}}"), verify_numerics=False).run(
        model, PassContext(calibration=task.calib))
    return {"mode": mode, "criterion": criterion, "perm_s": round(tp, 1), "compress_s": round(time.time() - t, 1),
            "permuted_vs_dense": same, "kept_magnitude_ratio": stats,
            "one_shot_held_out": _embedding_metrics(dense, _run_all(model, task.eval_feeds))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", default="magnitude,sparsegpt")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = minilm_task(n_calib=1000, n_eval=500)
    dense = _run_all(task.model, task.eval_feeds)
    result = {"benchmark": "nm_permutation_experiment", "machine": machine_info(threads=2),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()], "calibration_sentences": 1000, "eval_sentences": 500,
              "runs": [run(task, dense, mode, c) for c in args.criteria.split(",") for mode in ("none", "ffn+head")]}
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
