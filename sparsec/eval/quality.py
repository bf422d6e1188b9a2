"""Real-data evaluation of pruning methods (what `bench/quality_eval.py` prints as JSON).

- `digits`: the zoo's digits CNN (trained deterministically on sklearn's 8x8 digits),
  top-1 accuracy on the held-out test split; calibration = training images.
- `minilm`: the real all-MiniLM-L6-v2 encoder on real English sentences from
  `pydoc_data.topics`; calibration and evaluation sentences are disjoint. Metrics: mean
  cosine of the (normalised) embeddings to the dense model's, and nearest-neighbour
  agreement (the evaluation sentence closest to each sentence is the same as with dense).
A method is `magnitude`, `wanda` or `sparsegpt` with a pattern (`2:4`, `u:0.75`, ...),
`auto` (allocate to a fidelity floor) or `alloc` (allocate to a sparsity budget).
Everything runs through the same passes and ONNX IR as the compiler.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import row_cosines
from sparsec.calib.runner import run_outputs
from sparsec.errors import OptionError
from sparsec.passes.sparsify.patterns import parse_pattern
from sparsec.pm import PassContext, PassManager, parse_pipeline

log = logging.getLogger("sparsec")
METHODS = ("magnitude", "wanda", "sparsegpt", "auto", "alloc")


@dataclass(frozen=True)
class Task:
    name: str
    model: ir.Model
    calib: CalibrationData
    eval_feeds: dict[str, np.ndarray]
    labels: np.ndarray | None  # classification tasks


def _cache_dir() -> Path:
    from sparsec.models_zoo.cache import cache_dir

    return cache_dir()


def digits_task(n_calib: int = 256) -> Task:
    from sparsec.models_zoo.digits import load_digits_split
    from sparsec.models_zoo.export import cached_export_ir

    x_train, _, x_test, y_test = load_digits_split()
    model = cached_export_ir("digits_cnn")
    calib = CalibrationData({"input": x_train[:n_calib].numpy()}, batch_size=64, source="digits train split")
    return Task("digits", model, calib, {"input": x_test.numpy()}, y_test.numpy())


def minilm_task(n_calib: int = 1000, n_eval: int = 500, packed: bool = False, static: bool = False) -> Task:
    """`packed`: calibration sentences packed into full sequences (no padding rows in the
    statistics); else one padded sentence per sample, the distribution the evaluation uses
    (what a fidelity floor should be checked on). `static`: the export with batch fixed at 1
    (what a default export gives; every run then feeds one sentence at a time)."""
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.sentences import sentence_split

    path = _cache_dir() / ("minilm_b1.onnx" if static else "minilm.onnx")
    if path.is_file():
        model = ir.load(path)
    else:
        model = minilm.export_minilm_ir(1, static=True) if static else minilm.export_minilm_ir()
        path.parent.mkdir(parents=True, exist_ok=True)
        ir.save(model, path)
    calib_sentences, eval_sentences = sentence_split(n_calib, n_eval)
    feeds = minilm.packed_calibration(calib_sentences) if packed else minilm.tokenize(calib_sentences)
    calib = CalibrationData(
        feeds, batch_size=32, source=f"pydoc sentences ({'packed' if packed else 'one per sample'})", row_mask="attention_mask"
    )
    return Task("minilm", model, calib, minilm.tokenize(eval_sentences), None)


def pipeline_for(method: str, pattern: str, *, min_fidelity: float, budget: float, min_params: int) -> str:
    if method not in METHODS:
        raise OptionError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    if method == "auto":
        return f"allocate{{min_fidelity={min_fidelity} criterion=sparsegpt min_params={min_params}}}"
    if method == "alloc":
        p = parse_pattern(pattern)
        if p.kind != "unstructured":
            raise OptionError("method 'alloc' spreads an unstructured budget: give --pattern u:FRACTION")
        levels = sorted({0.25, 0.5, 0.625, 0.75, 0.875, 0.95, p.sparsity})
        cands = ",".join(f"u:{s:g}" for s in levels)
        return (
            f"allocate{{target=sparsity budget={p.sparsity} candidates=[{cands}] criterion=sparsegpt "
            f"scan_criterion=sparsegpt min_params={min_params}}}"
        )
    p = parse_pattern(pattern)
    if p.kind == "nm":
        return f"nm-sparsity{{n={p.n} m={p.m} criterion={method} min_params={min_params}}}"
    return f"sparsify{{pattern={p} criterion={method} min_params={min_params}}}"


def _run_all(model: ir.Model, feeds: dict[str, np.ndarray], batch: int = 128) -> np.ndarray:
    """The first output over every evaluation sample (in the model's own batch size)."""
    return run_outputs(model, CalibrationData(feeds, batch_size=batch, source="evaluation samples"))[0]


def _embedding_metrics(dense: np.ndarray, sparse: np.ndarray) -> dict[str, float]:
    d = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    s = sparse / np.linalg.norm(sparse, axis=1, keepdims=True)
    eye = 2.0 * np.eye(len(d))
    nn_dense = np.argmax(d @ d.T - eye, axis=1)
    nn_sparse = np.argmax(s @ s.T - eye, axis=1)
    return {"mean_cosine": float(np.mean(row_cosines(dense, sparse))), "nn_agreement": float(np.mean(nn_dense == nn_sparse))}


def with_options(pipeline: str, options: str) -> str:
    """`pipeline` (one pass) with extra `key=value` options, e.g. 'refit_norms=false damp=0.03'."""
    return pipeline[:-1] + " " + options.strip() + "}" if options.strip() else pipeline


def evaluate_method(
    task: Task, method: str, pattern: str = "2:4", *, min_fidelity: float = 0.98, budget: float = 0.0, min_params: int = 1,
    pipeline: str | None = None,
) -> dict[str, Any]:
    """Prune a copy of the task's model with `method` (or the given `pipeline` text) and
    measure it against the dense one."""
    text = pipeline or pipeline_for(method, pattern, min_fidelity=min_fidelity, budget=budget, min_params=min_params)
    model = task.model.clone()
    ctx = PassContext(calibration=task.calib)
    start = time.perf_counter()
    records = PassManager(parse_pipeline(text), verify_numerics=False).run(model, ctx)
    seconds = time.perf_counter() - start
    dense_out = _run_all(task.model, task.eval_feeds)
    sparse_out = _run_all(model, task.eval_feeds)
    result: dict[str, Any] = {
        "task": task.name, "method": method, "pattern": pattern if method != "auto" else "auto", "pipeline": text,
        "calibration": f"{task.calib.num_samples} samples, {task.calib.source}", "eval_samples": int(next(iter(task.eval_feeds.values())).shape[0]),
        "prune_seconds": round(seconds, 2),
    }
    if task.labels is not None:
        acc_dense = float(np.mean(np.argmax(dense_out, axis=1) == task.labels))
        acc_sparse = float(np.mean(np.argmax(sparse_out, axis=1) == task.labels))
        result.update({"accuracy_dense": acc_dense, "accuracy": acc_sparse, "accuracy_drop_points": round(100 * (acc_dense - acc_sparse), 3),
                       # continuous held-out fidelity: accuracy moves in steps of one sample
                       "logits_rel_error": round(float(np.linalg.norm(sparse_out - dense_out) / np.linalg.norm(dense_out)), 6)})
    else:
        result.update(_embedding_metrics(dense_out, sparse_out))
    from sparsec.layers import find_layers

    layers = find_layers(model)
    total = sum(layer.weight.const_value.size for layer in layers)
    zeros = sum(int((layer.weight.const_value.numpy() == 0).sum()) for layer in layers)
    result["weight_zero_fraction"] = round(zeros / total, 4)
    result["layers"] = {d["layer"]: d["decision"] for d in ctx.decisions if "decision" in d}
    stats = records[-1].stats
    for key in ("predicted_speedup", "measured_fidelity", "nm_param_fraction", "layers_sparse", "layers_considered", "sensitivity_seconds", "round_log"):
        if key in stats:
            result[key] = stats[key]
    return result
