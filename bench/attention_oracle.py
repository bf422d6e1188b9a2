"""How much of MiniLM's attention a block layout can keep at all: per-layer head output error
of block-selection rules at one budget, up to the oracle (the key blocks with the most
softmax mass, known only after computing dense attention). Prints one JSON document.

Real all-MiniLM-L6-v2, real text packed into 512-token sequences (as bench/attention_quality.py),
every attention block's Q, K, V and softmax output read from the dense model. For each head the
error is sum ||O' - O||^2 / sum ||O||^2 over rows, O' the softmax renormalised over the kept
keys (what SparseAttention computes). Rules, all at `--budget` key blocks per query block:
- static_local: a window of (budget + 1) // 2 blocks either side;
- static_local_sink: a window one block narrower plus key block 0;
- topk_mean: the own block + the op's run-time top-k (pooled query sum . key block mean);
- topk_quest: the own block + top-k by the Quest bound sum_d max(q_d kmax_d, q_d kmin_d);
- oracle_mass: the own block + the blocks holding the most dense softmax mass.

    .venv/bin/python bench/attention_oracle.py [--block 16] [--budget 8] [--sequences 8] [--e2e]

`--e2e`: the same rule end to end (every layer, 8 held-out sequences): the embedding cosine with
the op's run-time pooled choice and with the mass oracle's choice of as many blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx_ir as ir

from sparsec.bench import machine_info


def _layer_errors(p: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, blk: int, budget: int
                  ) -> dict[str, np.ndarray]:
    """Per rule, the per-head relative output error of one attention block (non-causal)."""
    b, heads, seq, _ = p.shape
    nk = seq // blk
    pp = p.reshape(b, heads, seq, nk, blk)
    y = np.einsum("bhiks,bhksd->bhikd", pp, v.reshape(b, heads, nk, blk, -1))  # per key block: P V
    mass, dense = pp.sum(-1), y.sum(3)
    qb = np.arange(seq) // blk

    def error(allowed: np.ndarray) -> np.ndarray:  # allowed [B|1, H|1, nq, nk] -> per head
        a = np.broadcast_to(allowed, (b, heads, nk, nk))[:, :, qb, :].astype(np.float32)
        out = np.einsum("bhsk,bhskd->bhsd", a, y) / np.maximum((a * mass).sum(-1), 1e-30)[..., None]
        return ((out - dense) ** 2).sum((0, 2, 3)) / (dense ** 2).sum((0, 2, 3))

    diff = np.abs(np.arange(nk)[:, None] - np.arange(nk)[None, :])
    own = np.broadcast_to(diff == 0, (b, heads, nk, nk))

    def topk(scores: np.ndarray) -> np.ndarray:
        order = np.argsort(-np.where(own, -np.inf, scores), -1, kind="stable")[..., :budget - 1]
        out = own.copy()
        np.put_along_axis(out, order, True, -1)
        return out

    qm = q.reshape(b, heads, nk, blk, -1).mean(3)
    kb = k.reshape(b, heads, nk, blk, -1)
    quest = np.maximum(qm[:, :, :, None] * kb.max(3)[:, :, None], qm[:, :, :, None] * kb.min(3)[:, :, None]).sum(-1)
    w = (budget + 1) // 2
    return {
        "static_local": error((diff < w)[None, None]),
        "static_local_sink": error(((diff < w - 1) | (np.arange(nk)[None, :] == 0))[None, None]),
        "topk_mean": error(topk(qm @ kb.mean(3).transpose(0, 1, 3, 2))),
        "topk_quest": error(topk(quest)),
        "oracle_mass": error(topk(mass.reshape(b, heads, nk, blk, nk).sum(3))),
    }


def _mass_scores(b, q, k, qmem, kmem, scale: float):  # noqa: ANN001,ANN202  (attention_reference's builder values)
    """The oracle's block scores: each block pair's share of the dense softmax (computed in the
    graph), in place of the op's pooled estimate."""
    import sparsec.dialect.attention_reference as R

    kx = R._repeat_kv(b, k, q)
    logits = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [kx], perm=[0, 1, 3, 2])]),
                          b.const(np.array(scale, np.float32), "scale")])
    probs = b.op("Softmax", [logits], axis=-1)  # [B, Hq, Sq, Sk]
    return b.op("MatMul", [b.op("MatMul", [qmem, probs]), b.op("Transpose", [kmem], perm=[1, 0])])


def _end_to_end(path, calib_feeds: dict, eval_feeds: dict, topk: int, block: int) -> dict:  # noqa: ANN001
    """MiniLM embedding cosine with every attention at own block + `topk` blocks, chosen at run
    time by the op's pooled estimate and by the mass oracle."""
    import sparsec.dialect.attention_reference as R
    from sparsec.calib.data import CalibrationData
    from sparsec.calib.runner import run_outputs
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    sys.path.insert(0, os.path.dirname(__file__))
    from attention_quality import _metrics

    calib = CalibrationData(calib_feeds, batch_size=4, source="packed")
    evaluation = CalibrationData(eval_feeds, batch_size=4, source="packed (held out)")
    dense = run_outputs(ir.load(path), evaluation)[0]
    pipeline = f"sparse-attention{{layout='topk:{topk}' block={block}}}"
    out: dict = {"pipeline": pipeline}
    original = R.block_scores
    try:
        for name, rule in (("pooled_estimate", original), ("mass_oracle", _mass_scores)):
            R.block_scores = rule
            model = ir.load(path)
            PassManager(parse_pipeline(pipeline), verify_each=False).run(model, PassContext(calibration=calib))
            out[name] = _metrics(dense, run_outputs(model, evaluation)[0])
    finally:
        R.block_scores = original
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--budget", type=int, default=8, help="key blocks kept per query block")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--e2e", action="store_true", help="also the embedding cosine with the oracle's blocks in every layer")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from attention_quality import _sequences

    from sparsec.calib.data import CalibrationData
    from sparsec.calib.runner import CalibrationRunner
    from sparsec.ir.shapes import infer_concrete_shapes
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.cache import cache_dir
    from sparsec.passes.attention.match import find_attention

    start = time.time()
    path = cache_dir() / "minilm_s512.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        ir.save(minilm.export_minilm_ir(seq_len=512), path)
    feeds, eval_feeds = _sequences(args.sequences, args.sequences, 512)
    calib = CalibrationData(feeds, batch_size=4, source="packed pydoc sentences")
    model = ir.load(path)
    matches, _ = find_attention(model, infer_concrete_shapes(model, {}))
    names = [n for m in matches for n in (m.softmax.outputs[0].name, m.q.name, m.k.name, m.v.name)]
    arrays: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for outs in CalibrationRunner(model, calib, threads=2).values(names):
        for n in names:
            arrays[n].append(outs[n])
    layers = []
    for m in matches:
        q, k, v = (np.concatenate(arrays[x.name]) for x in (m.q, m.k, m.v))
        k = k.transpose(m.k_perm) if m.k_perm is not None else k
        p = np.concatenate(arrays[m.softmax.outputs[0].name]).reshape(-1, q.shape[1], q.shape[2], q.shape[2])
        rules = _layer_errors(p, q, k, v, args.block, args.budget)
        layers.append({"block": m.name, **{r: {"mean_head_error": round(float(e.mean()), 4),
                                                "worst_head_error": round(float(e.max()), 4)} for r, e in rules.items()}})
        print(f"{m.name}: " + ", ".join(f"{r} {float(e.mean()):.4f}" for r, e in rules.items()), file=sys.stderr)
    e2e = _end_to_end(path, feeds, eval_feeds, args.budget - 1, args.block) if args.e2e else None
    doc = {"bench": "attention_oracle", "model": "all-MiniLM-L6-v2 (real weights)", "seq": 512, "block": args.block,
           "budget_blocks": args.budget, "density": round(args.budget / (512 // args.block), 4), "sequences": args.sequences,
           "layers": layers, **({"end_to_end": e2e} if e2e else {}), "cpu": machine_info(), "load_average": os.getloadavg(),
           "seconds": round(time.time() - start, 1)}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
