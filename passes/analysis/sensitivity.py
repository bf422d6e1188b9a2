"""`layer-sensitivity`: how much each layer's candidate patterns damage the model's output.

For every prunable layer and candidate pattern, the layer alone is pruned (with the chosen
criterion, on dense-model statistics) and the damage is measured:
- `metric=output`: 1 - mean cosine of the model's final outputs on calibration data
  (exact, one forward sweep per layer and candidate);
- `metric=proxy`: the layer's own relative output error squared, ||X dW^T||^2 / ||X W^T||^2,
  from its input Gram matrix, with no forward sweep (for models where sweeps are too slow).
Both add up over layers for small errors, which is what `allocate` assumes. Results are
cached on disk per (model hash, data hash, settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import cosine_damage
from sparsec.calib.runner import CalibrationRunner
from sparsec.calib.scan import sensitivity_scan
from sparsec.calib.stats import dense_stats, model_digest, require_calibration
from sparsec.errors import PipelineError
from sparsec.executor import Executor, LocalExecutor, Shared
from sparsec.executor.shipping import share_model, shared_model
from sparsec.layer_view import LayerView, bias_of, view_of
from sparsec.passes.sparsify.apply import pattern_skip_reason, prune_layer
from sparsec.passes.sparsify.criteria import Reconstruction, check_criterion, needs_data
from sparsec.passes.sparsify.options import LayerSelection
from sparsec.passes.sparsify.patterns import Pattern, parse_pattern
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass

log = logging.getLogger("sparsec")
METRICS = ("output", "proxy")
NM_CANDIDATES = ("2:4", "4:8", "1:4", "1:8")


@dataclass
class SensitivityTable:
    criterion: str
    metric: str
    candidates: list[str]
    samples: int
    damage: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> pattern -> damage
    weights: dict[str, str] = field(default_factory=dict)  # layer -> weight initializer
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # layer -> pattern -> reason
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        return cls(**d)


def _cache_path(key: str) -> Path:
    root = os.environ.get("SPARSEC_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sparsec"
    return base / "sensitivity" / f"{key}.json"


def scan_sensitivity(
    model: ir.Model,
    calib: CalibrationData,
    candidates: list[Pattern],
    *,
    criterion: str = "wanda",
    metric: str = "output",
    samples: int = 16,
    selection: LayerSelection | None = None,
    threads: int = 2,
    progress: bool = True,
    use_cache: bool = True,
    recon: Reconstruction | None = None,
    executor: Executor | None = None,
) -> SensitivityTable:
    """`selection`: the layers to scan (default: every MatMul/Gemm/Conv with >= 1024 weights);
    `recon` (sparsegpt trials): how the kept weights (and the bias) are corrected;
    `executor`: where the trials run (default: in process). One task per layer runs all its
    candidates on one session; results are reduced in layer order, so every executor gives
    the same table."""
    recon = recon or Reconstruction()
    selection = selection or LayerSelection()
    executor = executor or LocalExecutor()
    if metric not in METRICS:
        raise PipelineError(f"pass 'layer-sensitivity': unknown metric '{metric}' (known: {', '.join(METRICS)})")
    sub = calib.head(samples)
    names = [str(c) for c in candidates]
    key_text = json.dumps([model_digest(model), sub.digest(), names, criterion, metric, repr(selection), str(recon)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    path = _cache_path(key)
    if use_cache and path.is_file():
        log.info("layer sensitivity: cached (%s)", path)
        return SensitivityTable.from_dict(json.loads(path.read_text()))
    start = time.perf_counter()
    table = SensitivityTable(criterion, metric, names, sub.num_samples)
    views = [view_of(layer) for layer in selection.selected_layers(model)]
    stats = dense_stats(model, views, sub, threads=threads) if needs_data(criterion) or metric == "proxy" else {}
    job = _ScanJob(
        uuid.uuid4().hex, share_model(executor, model), executor.share(sub), selection, names, criterion, metric, recon, threads
    )
    try:
        state = _state(job)  # the caller's runner gives the reference (and serves the local executor's tasks)
        if state.runner is not None:
            job.reference = executor.share((state.runner.outputs(), state.runner.output_rows()))
        tasks = [_LayerTask(job, v.name, stats.get(v.name)) for v in views]
        log.info("layer sensitivity: %d layers x %d candidates on executor %s", len(tasks), len(names), executor.name)
        results = executor.map(_scan_layer, tasks, desc="layer sensitivity", progress=progress)
    finally:
        _STATES.pop(job.key, None)
    for view, result in zip(views, results, strict=True):  # layer order: the same table on every executor
        table.weights[view.name] = view.layer.weight.name
        if result.damage:
            table.damage[view.name] = result.damage
        if result.skipped:
            table.skipped[view.name] = result.skipped
    table.seconds = round(time.perf_counter() - start, 3)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table.to_dict()))
    return table


@dataclass
class _ScanJob:
    """What every trial task of one scan shares (picklable: the model and data are handles)."""

    key: str
    model: Shared
    calib: Shared
    selection: LayerSelection
    candidates: list[str]
    criterion: str
    metric: str
    recon: Reconstruction
    threads: int  # the same ORT threads everywhere: the same outputs, bit for bit
    reference: Shared | None = None  # (reference outputs, output rows) for metric=output


@dataclass(frozen=True)
class _LayerTask:
    job: _ScanJob
    layer: str
    stats: Any  # the layer's dense statistics (criteria that need data), or None


@dataclass
class _LayerResult:
    damage: dict[str, float]
    skipped: dict[str, str]


@dataclass
class _ScanState:
    """One process's view of a scan: the model, its layers and (metric=output) its runner."""

    model: ir.Model
    views: dict[str, LayerView]
    biases: dict[str, ir.Value]
    runner: CalibrationRunner | None


_STATES: dict[str, _ScanState] = {}  # scan key -> state; a worker keeps only its latest scan


def _state(job: _ScanJob) -> _ScanState:
    state = _STATES.get(job.key)
    if state is None:
        _STATES.clear()  # a long-lived worker holds one scan's model at a time
        model = shared_model(job.model)
        views = [view_of(layer) for layer in job.selection.selected_layers(model)]
        biases = {
            v.name: b for v in views if job.criterion == "sparsegpt" and job.recon.fit_bias and (b := bias_of(v.layer)) is not None
        }
        runner = None
        if job.metric == "output":
            params = [b.name for b in biases.values()]
            runner = CalibrationRunner(model, job.calib.get(), views=views, params=params, threads=job.threads)
        state = _STATES[job.key] = _ScanState(model, {v.name: v for v in views}, biases, runner)
    return state


def _scan_layer(task: _LayerTask) -> _LayerResult:
    """Every candidate of one layer (an executor task: module-level, picklable in and out)."""
    job = task.job
    state = _state(job)
    view = state.views[task.layer]
    runner = state.runner
    reference, rows = job.reference.get() if job.reference is not None else (None, None)
    skipped: dict[str, str] = {}

    def trial(pattern: Pattern) -> Callable[[], list[np.ndarray] | float | None]:
        def run() -> list[np.ndarray] | float | None:
            reason = pattern_skip_reason(view.layer, pattern, job.selection.min_params)
            if reason is not None:
                skipped[str(pattern)] = reason
                return None
            w = view.layer.weight.const_value.numpy()
            bias = state.biases.get(view.name)
            b = bias.const_value.numpy() if bias is not None else None  # type: ignore[union-attr]
            new, new_b, outcome = prune_layer(view, w, pattern, job.criterion, task.stats, bias=b, recon=job.recon)
            if runner is None:  # proxy: the layer's own relative output error, squared
                return (outcome.output_rel_error if outcome.output_rel_error is not None else outcome.weight_rel_error) ** 2
            trial = {view.layer.weight.name: new, **({bias.name: new_b} if bias is not None and new_b is not None else {})}
            return runner.outputs(trial)

        return run

    trials = [(view.name, c, trial(parse_pattern(c))) for c in job.candidates]
    found = sensitivity_scan(trials, reference, cosine_damage, rows, progress=False)
    return _LayerResult({str(p): d for p, d in found.get(view.name, {}).items()}, skipped)


_LAST: dict[int, SensitivityTable] = {}  # ctx id -> table of the last layer-sensitivity run


def last_table(ctx: PassContext) -> SensitivityTable | None:
    return _LAST.get(id(ctx))


@register_pass
@dataclass(frozen=True)
class LayerSensitivity(LayerSelection, Pass):
    name = "layer-sensitivity"
    summary = "Measure each layer's output damage for candidate patterns on calibration data (an analysis: changes nothing)."
    exact = True

    candidates: tuple[str, ...] = option(NM_CANDIDATES, "patterns to try per layer (dense, N:M, u:F, bRxC:F)")
    criterion: str = option("wanda", "criterion used for each trial: magnitude, wanda or sparsegpt")
    metric: str = option("output", "output (1 - cosine of final outputs) or proxy (layer output error from its Gram)")
    samples: int = option(16, "calibration samples used")

    def __post_init__(self) -> None:
        for c in self.candidates:
            parse_pattern(c)
        check_criterion(self.criterion, self.name)
        if self.metric not in METRICS:
            raise PipelineError(f"pass '{self.name}': unknown metric '{self.metric}' (known: {', '.join(METRICS)})")
        if self.samples < 1:  # zero samples would measure nothing (and crashed the scan)
            raise PipelineError(f"pass '{self.name}': samples must be at least 1, got {self.samples}")

    def table(self, model: ir.Model, ctx: PassContext) -> SensitivityTable:
        calib = require_calibration(ctx, "layer-sensitivity")
        table = scan_sensitivity(
            model, calib, [parse_pattern(c) for c in self.candidates], criterion=self.criterion, metric=self.metric,
            samples=self.samples, selection=LayerSelection(self.op_types, self.include, self.exclude, self.min_params),
            executor=ctx.executor,
        )
        _LAST[id(ctx)] = table
        return table

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        table = self.table(model, ctx)
        for layer, curve in table.damage.items():
            ctx.record(self.name, layer, weight=table.weights[layer], sensitivity={k: round(v, 8) for k, v in curve.items()}, metric=table.metric)
        return PassResult(
            changed=False,
            stats={"layers": len(table.damage), "trials": sum(len(c) for c in table.damage.values()), "seconds": table.seconds, "metric": table.metric},
        )


def damage_array(table: SensitivityTable, layer: str, patterns: list[str]) -> np.ndarray:
    curve = table.damage.get(layer, {})
    return np.array([0.0 if p == "dense" else curve.get(p, np.inf) for p in patterns])
