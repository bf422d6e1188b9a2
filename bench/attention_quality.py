"""Attention quality bar (issue 11): per-head calibrated layouts vs one uniform window, on the
real all-MiniLM-L6-v2 and real text packed into 512-token sequences.

Prints one JSON document. Calibration and evaluation text are disjoint sentences (from
`pydoc_data.topics`, as `sparsec.eval.quality`), each packed back to back into full 512-token
sequences (no padding). Every variant is the same export rewritten by the `sparse-attention`
pass and run through the op's reference lowering (standard ONNX, exact semantics); the metric
is the mean cosine of the pooled, normalised embeddings against the dense model's, and the
nearest-neighbour agreement between evaluation sequences. Variants:
- `auto` at --density (per head, from the calibration profile; candidates static windows and
  run-time top-k), and `auto` restricted to static windows (`topk=false`);
- one uniform run-time top-k layout (own block + K blocks) near --density;
- the uniform local windows just below and above that density (same for every head), and
  `auto` at exactly the density each of them reaches, so each comparison is at equal density.
`--summary`: every `auto` variant also has summary-key candidates (`summary=true`: each left-out
key block read as its mean key and value, at 1/block of a block pair; counted in the density).
`--topk-score softmax`: the run-time top-k estimate of every variant is the pooled query's
softmax mass per key block (`topk_score=softmax`) instead of pooled query . key-block mean.
Needs the `eval` extra (`pip install -e '.[eval]'`).

    .venv/bin/python bench/attention_quality.py [--density 0.25] [--block 32] [--calib 16] [--eval 24] [--summary] [--topk-score softmax]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import onnx_ir as ir

from sparsec.bench import machine_info


def _sequences(n_calib: int, n_eval: int, seq: int) -> tuple[dict, dict]:
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.sentences import all_sentences, sentence_split

    per_seq = seq // 12 + 8  # sentences average ~15 tokens: ask for enough
    total = len(all_sentences())
    want_c, want_e = n_calib * per_seq, n_eval * per_seq
    if want_c + want_e > total:
        raise SystemExit(f"attention_quality: {total} sentences cannot fill {n_calib}+{n_eval} sequences of {seq}")
    calib_s, eval_s = sentence_split(want_c, want_e)
    calib = minilm.packed_calibration(calib_s, seq)
    evals = minilm.packed_calibration(eval_s, seq)
    if len(calib["input_ids"]) < n_calib or len(evals["input_ids"]) < n_eval:
        raise SystemExit("attention_quality: not enough text for the requested sequences")
    return ({k: v[:n_calib] for k, v in calib.items()}, {k: v[:n_eval] for k, v in evals.items()})


def _metrics(dense: np.ndarray, other: np.ndarray) -> dict:
    d = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    o = other / np.linalg.norm(other, axis=1, keepdims=True)
    eye = 2.0 * np.eye(len(d))
    agree = np.argmax(d @ d.T - eye, axis=1) == np.argmax(o @ o.T - eye, axis=1)
    cos = np.sum(d * o, axis=1)
    return {"mean_cosine": round(float(cos.mean()), 5), "worst_cosine": round(float(cos.min()), 5),
            "nn_agreement": round(float(agree.mean()), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--calib", type=int, default=16, help="calibration sequences")
    ap.add_argument("--eval", type=int, default=24, help="evaluation sequences")
    ap.add_argument("--auto-only", action="store_true", help="only the auto variants (no uniform-window comparisons)")
    ap.add_argument("--summary", action="store_true", help="auto variants also consider summary keys (summary=true)")
    ap.add_argument("--topk-score", choices=("mean", "softmax"), default="mean", help="run-time top-k estimate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from sparsec.calib.data import CalibrationData
    from sparsec.calib.runner import run_outputs
    from sparsec.ir.shapes import infer_concrete_shapes
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.cache import cache_dir
    from sparsec.passes.attention.auto_layout import uniform_window
    from sparsec.passes.attention.head_profile import profile_heads
    from sparsec.passes.attention.match import find_attention
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    start = time.time()
    path = cache_dir() / f"minilm_s{args.seq}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        ir.save(minilm.export_minilm_ir(seq_len=args.seq), path)
    calib_feeds, eval_feeds = _sequences(args.calib, args.eval, args.seq)
    calib = CalibrationData(calib_feeds, batch_size=4, source="packed pydoc sentences")
    evaluation = CalibrationData(eval_feeds, batch_size=4, source="packed pydoc sentences (held out)")
    dense_model = ir.load(path)
    dense = run_outputs(dense_model, evaluation)[0]
    print(f"dense done ({time.time() - start:.0f} s)", file=sys.stderr)

    def variant(pipeline: str) -> dict:
        model = ir.load(path)
        ctx = PassContext(calibration=calib)
        records = PassManager(parse_pipeline(pipeline), verify_each=False).run(model, ctx)
        stats = records[0].stats if records else {}
        out = run_outputs(model, evaluation)[0]
        blocks = stats.get("rewritten", [])
        result = {"pipeline": pipeline, **_metrics(dense, out),
                  "density": stats.get("auto", {}).get("density", blocks[0]["density"] if blocks else None),
                  "attention_blocks": len(blocks)}
        print(f"{pipeline}: {result['mean_cosine']} ({time.time() - start:.0f} s)", file=sys.stderr)
        return result

    # The uniform windows around the budget (their densities from the calibration profile).
    model = ir.load(path)
    matches, _ = find_attention(model, infer_concrete_shapes(model, {}))
    below = 1
    if not args.auto_only:
        profiles, _ = profile_heads(model, matches, calib, args.block, {m.name: False for m in matches}, topk=False)
        below = uniform_window(profiles, args.density)
    extra = (" summary=true" if args.summary else "") + (f" topk_score={args.topk_score}" if args.topk_score != "mean" else "")
    results = {"auto": variant(f"sparse-attention{{layout=auto density={args.density} block={args.block}{extra}}}"),
               "auto_static_only": variant(f"sparse-attention{{layout=auto density={args.density} block={args.block} "
                                           f"topk=false{extra}}}")}
    nk = -(-args.seq // args.block)
    topk = max(1, round(args.density * nk) - 1)  # own block + K (non-causal MiniLM)
    if not args.auto_only:
        score = f" topk_score={args.topk_score}" if args.topk_score != "mean" else ""
        results["uniform_topk"] = variant(f"sparse-attention{{layout='topk:{topk}' block={args.block}{score}}}")
    comparisons = []
    for w in sorted({below, below + 1}) if not args.auto_only else ():
        uni = variant(f"sparse-attention{{layout='local:{w * args.block}' block={args.block}}}")
        same = variant(f"sparse-attention{{layout=auto density={uni['density']} block={args.block}{extra}}}")
        comparisons.append({"uniform_local_blocks": w, "uniform": uni, "auto_same_density": same,
                            "auto_better": same["mean_cosine"] > uni["mean_cosine"]})
    doc = {
        "bench": "attention_quality", "model": "all-MiniLM-L6-v2 (real weights)", "seq": args.seq,
        "block": args.block, "summary_keys": args.summary, "topk_score": args.topk_score, "calibration_sequences": args.calib, "evaluation_sequences": args.eval,
        "density_budget": args.density, "attention_blocks_found": len(matches),
        "auto": results["auto"], "auto_static_only": results["auto_static_only"],
        "uniform_topk": results.get("uniform_topk"), "equal_density_comparisons": comparisons,
        "bar": {"auto_mean_cosine_ge_0.98": results["auto"]["mean_cosine"] >= 0.98,
                "auto_beats_uniform_at_equal_density": (all(c["auto_better"] for c in comparisons)
                                                         if comparisons else None)},
        "cpu": machine_info(), "load_average": os.getloadavg(), "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
