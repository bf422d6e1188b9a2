"""MoE FFN bar: a 768 -> 3072 -> 768 GELU FFN with 16 experts, 25% active, vs the dense FFN in
ONNX Runtime, 2 threads, at batch 1 (decode) and 128 tokens. Prints JSON.

Two residencies: one FFN (18.9 MB of dense weights, may sit in a 32 MB L3) and a chain of
`--chain` FFN blocks with residuals (x + FFN(x)), whose weights exceed the last-level cache
(DESIGN.md §5: batch-1 tests must stream weights from DRAM); times are per FFN block.
Dense and MoE run side by side in one process with the compile's own latency measurement
(`sparsec.latency.measure_latency`: interleaved blocks with a pause before each, so one
session's spinning workers cannot steal the cores the next one needs; medians and a paired
noise estimate), same threads; dense and MoE each run with ORT's pool spinning (its default)
and without, and the faster setting of each counts, as in the compile (an
ORT dense pool left spinning after its block took cores from the MoE calls that followed:
6.4 ms vs 4.7 ms per MoE call at 128 tokens on the AVX2 AMD EPYC). The MoE
output is checked against its reference lowering (masked dense ONNX) on the same input.

    .venv/bin/python bench/moe_bench.py [--chain 8] [--tokens 1,128] [--threads 2] [--one-thread-too] [--out F]

The bars are the `--threads` cases; `--one-thread-too` adds the same cases on one thread
(`cases_one_thread`, not in the bars) to show how each side scales to the threads.
    .venv/bin/python bench/moe_bench.py --minilm [--calib 256] [--eval 500] [--k uniform,per-layer]

`--minilm`: the real MiniLM with every FFN MoE-fied (16 experts), the curve of embedding
cosine vs dense on held-out sentences at 12.5, 25, 50 and 75% of experts active, for the
data-free (weights + centroid) and the calibrated (co-activation + learned router, weights +
learned router) variants; calibration sentences are disjoint from the held-out ones.

`--minilm --recover`: after each one-shot MoE-fication, distillation fine-tuning of the
routers and experts with the dense model as teacher (sparsec.recover, routing structure kept),
recovery_bench's split discipline: the `--calib` sentences (<= 1000) for MoE-fication and
training, `--val` disjoint sentences for early stopping only, the `--eval` held-out sentences
(the ones `minilm_task` holds out) for the numbers; one torch thread by default (shared
machine), `--max-seconds` per fine-tune.

    .venv/bin/python bench/moe_bench.py --minilm --calib 1000 --eval 500 --variants coactivation:learned \
        --active 0.5 --k per-layer --recover --max-seconds 900 --lr 1e-4 --augment --router-weight 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from sparsec.bench import emit_json, machine_info

D, F, E, TOP_K = 768, 3072, 16, 4


def ffn_chain(blocks: int, tokens: int, seed: int = 0):  # noqa: ANN201  (an onnx_ir.Model)
    from sparsec.testing import make_model

    lines, inits = [], {}
    rng = np.random.default_rng(seed)
    prev = "x"
    for i in range(blocks):
        lines += [f"h{i} = MatMul({prev}, w1_{i})", f"hb{i} = Add(h{i}, b1_{i})", f"s{i} = Div(hb{i}, sqrt2)",
                  f"e{i} = Erf(s{i})", f"p{i} = Add(e{i}, one)", f"q{i} = Mul(hb{i}, p{i})", f"a{i} = Mul(q{i}, half)",
                  f"o{i} = MatMul(a{i}, w2_{i})", f"ob{i} = Add(o{i}, b2_{i})", f"r{i} = Add({prev}, ob{i})"]
        inits |= {f"w1_{i}": (rng.standard_normal((D, F)) / np.sqrt(D)).astype(np.float32),
                  f"b1_{i}": (0.1 * rng.standard_normal(F)).astype(np.float32),
                  f"w2_{i}": (rng.standard_normal((F, D)) / np.sqrt(F)).astype(np.float32),
                  f"b2_{i}": (0.1 * rng.standard_normal(D)).astype(np.float32)}
        prev = f"r{i}"
    lines.append(f"y = Identity({prev})")
    text = (f'<ir_version: 10, opset_import: ["" : 18]>\nffn (float[{tokens}, {D}] x) => (float[{tokens}, {D}] y) {{\n'
            + "\n".join(lines) + "\n}")
    consts = {"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32)}
    return make_model(text, **inits, **consts)


def _runner(session):  # noqa: ANN001, ANN202
    return lambda feeds: session.run(None, feeds)


def run_case(blocks: int, tokens: int, threads: int) -> dict:
    from sparsec.ir.io import model_bytes
    from sparsec.latency import measure_latency
    from sparsec.numerics import reference_bytes
    from sparsec.pm import PassContext, PassManager, parse_pipeline
    from sparsec.runtime import make_session

    dense = ffn_chain(blocks, tokens)
    moe = ffn_chain(blocks, tokens)
    ctx = PassContext()
    PassManager(parse_pipeline(f"moefy-ffn{{experts={E} top_k={TOP_K}}}"), verify_numerics=False).run(moe, ctx)
    reference = reference_bytes(moe)
    PassManager(parse_pipeline("lower-moe-kernels"), verify_numerics=False).run(moe, ctx)
    assert sum(n.op_type == "MoEFFN" for n in moe.graph) == blocks
    x = np.random.default_rng(1).standard_normal((tokens, D)).astype(np.float32)
    # The MoE session under each runtime setting the compile measures (backends/ort/backend.py:
    # ORT's pool spinning off and on; the compile keeps the faster in the manifest and
    # sparsec.runtime deploys it). The kernels' regions run on ORT's pool, so with spinning
    # off every call pays a futex wake of the second thread (~0.2 ms at batch 1 on a VM).
    s_moe = {spin: make_session(model_bytes(moe), threads, allow_spinning=spin) for spin in (False, True)}
    got = s_moe[False].run(None, {"x": x})[0]
    want = make_session(reference, threads).run(None, {"x": x})[0]
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    load_before = os.getloadavg()
    runners = {f"spinning {'on' if spin else 'off'}": ({"allow_spinning": int(spin)}, _runner(session))
               for spin, session in s_moe.items()}
    lat = measure_latency(model_bytes(dense), runners, {"x": x}, threads, budget_s=20.0, label=f"moe b{tokens}")
    load_after = os.getloadavg()
    dense_ms, moe_ms = lat["dense_ms"] / blocks, lat["compiled_ms"] / blocks
    dense_bytes = 2 * D * F * 4
    moe_bytes = dense_bytes * TOP_K / E  # weights of the selected experts (batch 1); router is 48 KB
    flops = 2 * 2 * D * F * tokens
    return {
        "blocks": blocks, "tokens": tokens, "threads": threads,
        "weights_mb_dense": round(blocks * dense_bytes / 1e6, 1),
        "dense_ms_per_ffn": round(dense_ms, 4), "moe_ms_per_ffn": round(moe_ms, 4),
        "speedup": round(dense_ms / moe_ms, 3), "noise": lat["noise"], "dense_baseline": lat["baseline"],
        "dense_spinning_ms": lat["dense_spinning_ms"], "dense_no_spinning_ms": lat["dense_no_spinning_ms"],
        "moe_setting": lat["compiled_settings"], "moe_ms_by_setting": lat["compiled_by_setting_ms"],
        "rounds": lat["rounds"],
        "dense_gbs": round(dense_bytes / dense_ms / 1e6, 1) if tokens == 1 else None,
        "moe_gbs_selected": round(moe_bytes / moe_ms / 1e6, 1) if tokens == 1 else None,
        "dense_gflops": round(flops / dense_ms / 1e6, 1),
        "moe_effective_gflops": round(flops / moe_ms / 1e6, 1),
        "kernel_vs_reference_rel_l2": rel,
        "timings": {"dense": lat["dense"], "moe": lat["compiled"]},
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
    }


VARIANTS = (("weights", "centroid"), ("coactivation", "learned"), ("weights", "learned"))


def validation_set(n_calib: int, n_eval: int, n_val: int):  # noqa: ANN201  (CalibrationData)
    """`n_val` sentences disjoint from the calibration and the held-out ones (recovery_bench's split)."""
    from sparsec.calib.data import CalibrationData
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.sentences import sentence_split

    _, rest = sentence_split(n_calib, n_eval + n_val)
    return CalibrationData(minilm.tokenize(rest[n_eval:]), batch_size=32, source="pydoc validation sentences",
                           row_mask="attention_mask")


def recover_row(model, task, dense, validation, options) -> dict:  # noqa: ANN001
    """Fine-tune the MoE-fied `model` in place against the dense one; metrics on the held-out set."""
    import time

    from sparsec.eval.quality import _embedding_metrics, _run_all
    from sparsec.recover.finetune import finetune
    from sparsec.verify import verify_model

    wall, cpu = time.perf_counter(), time.process_time()
    result = finetune(model, task.model, task.calib, options, validation=validation)
    moe = [n for n in model.graph if n.op_type == "MoE"]
    return {"finetuned": _embedding_metrics(dense, _run_all(model, task.eval_feeds)),
            "layer_top_k_after": [n.attributes["top_k"].as_int() for n in moe],
            "verify_problems": [str(p) for p in verify_model(model)],
            "finetune_wall_s": round(time.perf_counter() - wall, 1), "finetune_cpu_s": round(time.process_time() - cpu, 1),
            "finetune": {k: v for k, v in result.to_dict().items() if k != "losses"},
            "loss_first_last": [result.losses[0][1], result.losses[-1][1]] if result.losses else None}


def minilm_curve(n_calib: int, n_eval: int, variants=VARIANTS, actives=(0.125, 0.25, 0.5, 0.75),  # noqa: ANN001
                 k_choices=("uniform",), recover=None, n_val: int = 128, refine_rounds: int = 3) -> dict:  # noqa: ANN001
    from sparsec.eval.quality import _embedding_metrics, _run_all, minilm_task
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    task = minilm_task(n_calib=n_calib, n_eval=n_eval)
    dense = _run_all(task.model, task.eval_feeds)
    validation = validation_set(n_calib, n_eval, n_val) if recover is not None else None
    rows = []
    for method, router in variants:
        for active in actives:
            for k_choice in k_choices:
                top_k = round(16 * active)
                model = task.model.clone()
                ctx = PassContext(calibration=task.calib)
                per_layer = {"uniform": "", "per-layer": f" active={active} refine=0",
                             "refined": f" active={active} refine={refine_rounds}"}[k_choice]
                text = f"moefy-ffn{{experts=16 top_k={top_k} method={method} router={router}{per_layer}}}"
                record = PassManager(parse_pipeline(text), verify_numerics=False).run(model, ctx)[0]
                got = _run_all(model, task.eval_feeds)
                moe = [d for d in ctx.decisions if d["pass"] == "moefy-ffn" and "cosine" in d]
                rows.append({"method": method, "router": router, "active": active, "k": k_choice,
                             "layer_top_k": [d["top_k"] for d in moe],
                             "active_reached": round(float(np.mean([d["top_k"] for d in moe])) / 16, 6),
                             "ffns": record.stats["ffns_converted"], **_embedding_metrics(dense, got),
                             "mean_layer_cosine": round(float(np.mean([d["cosine"] for d in moe])), 6)})
                print(json.dumps(rows[-1]), flush=True)
                if recover is not None:
                    rows[-1] |= recover_row(model, task, dense, validation, recover)
                    print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "moe_minilm_curve", "calib_sentences": n_calib, "eval_sentences": n_eval,
           "experts": 16, "machine": machine_info(), "rows": rows}
    if recover is not None:
        out |= {"validation_sentences": n_val, "recover_options": {k: v for k, v in vars(recover).items() if k != "progress"}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", type=int, default=8, help="FFN blocks in the DRAM-resident case")
    ap.add_argument("--tokens", default="1,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minilm", action="store_true", help="the MiniLM quality curve instead of timings")
    ap.add_argument("--calib", type=int, default=256, help="--minilm: calibration sentences")
    ap.add_argument("--eval", type=int, default=500, help="--minilm: held-out sentences")
    ap.add_argument("--variants", default=",".join(f"{m}:{r}" for m, r in VARIANTS), help="--minilm: method:router,...")
    ap.add_argument("--active", default="0.125,0.25,0.5,0.75", help="--minilm: active fractions")
    ap.add_argument("--k", default="uniform", help="--minilm: uniform, per-layer (calibrated top_k per FFN) and/or refined "
                    "(per-layer, then --refine rounds of measured moves between FFNs)")
    ap.add_argument("--refine", type=int, default=3, help="--k refined: rounds of moefy-ffn's refine (default 3)")
    ap.add_argument("--recover", action="store_true", help="--minilm: fine-tune each MoE-fied model (distillation)")
    ap.add_argument("--val", type=int, default=128, help="--recover: validation sentences (early stopping only)")
    ap.add_argument("--steps", type=int, default=100000, help="--recover: optimizer steps at most")
    ap.add_argument("--lr", type=float, default=1e-4, help="--recover: peak learning rate")
    ap.add_argument("--batch", type=int, default=16, help="--recover: sentences per step")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="--recover: wall-clock limit per fine-tune")
    ap.add_argument("--eval-every", type=int, default=50, help="--recover: steps between validation checks")
    ap.add_argument("--patience", type=int, default=6, help="--recover: validation checks without improvement before stopping")
    ap.add_argument("--augment", action="store_true", help="--recover: also train on augmented sentences")
    ap.add_argument("--router-weight", type=float, default=1.0, help="--recover: router distillation weight (0: experts only)")
    ap.add_argument("--torch-threads", type=int, default=1, help="--recover: torch threads")
    ap.add_argument("--one-thread-too", action="store_true", help="also every case on one thread (not in the bars)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()
    if args.minilm:
        import logging

        from sparsec.recover.finetune import FinetuneOptions

        logging.basicConfig(level=logging.INFO, format="%(message)s")

        variants = [tuple(v.split(":")) for v in args.variants.split(",")]
        actives = [float(a) for a in args.active.split(",")]
        recover = FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch, max_seconds=args.max_seconds,
                                  eval_every=args.eval_every, patience=args.patience, threads=args.torch_threads,
                                  progress=False, augment=args.augment, router_weight=args.router_weight) if args.recover else None
        result = minilm_curve(args.calib, args.eval, variants, actives, args.k.split(","), recover, args.val, args.refine)
        result["command"] = "python bench/moe_bench.py " + " ".join(sys.argv[1:])
        emit_json(result, args.out)
        return
    cases = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        for blocks in (1, args.chain):
            cases.append(run_case(blocks, tokens, args.threads))
    bars = {"batch 1: >= 3x": [c["speedup"] for c in cases if c["tokens"] == 1],
            "128 tokens: >= 2x": [c["speedup"] for c in cases if c["tokens"] == 128]}
    result = {"benchmark": "moe_ffn", "ffn": f"{D}->{F}->{D} gelu", "experts": E, "top_k": TOP_K,
              "machine": machine_info(), "bars": bars, "cases": cases}
    if args.one_thread_too:
        result["cases_one_thread"] = [run_case(c["blocks"], c["tokens"], 1) for c in cases]
    result["command"] = "python bench/moe_bench.py " + " ".join(sys.argv[1:])
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
