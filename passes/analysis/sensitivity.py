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
) -> SensitivityTable:
    """`selection`: the layers to scan (default: every MatMul/Gemm/Conv with >= 1024 weights);
    `recon` (sparsegpt trials): how the kept weights (and the bias) are corrected."""
    recon = recon or Reconstruction()
    selection = selection or LayerSelection()
    min_params = selection.min_params
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
    layers = selection.selected_layers(model)
    views = [view_of(layer) for layer in layers]
    stats = dense_stats(model, views, sub, threads=threads) if needs_data(criterion) or metric == "proxy" else {}
    biases = {v.name: b for v in views if criterion == "sparsegpt" and recon.fit_bias and (b := bias_of(v.layer)) is not None}
    runner = CalibrationRunner(model, sub, views=views, params=[b.name for b in biases.values()], threads=threads) if metric == "output" else None
    reference = runner.outputs() if runner is not None else None
    rows = runner.output_rows() if runner is not None else None

    def trial(view: LayerView, pattern: Pattern) -> Callable[[], list[np.ndarray] | float | None]:
        def run() -> list[np.ndarray] | float | None:
            table.weights[view.name] = view.layer.weight.name
            reason = pattern_skip_reason(view.layer, pattern, min_params)
            if reason is not None:
                table.skipped.setdefault(view.name, {})[str(pattern)] = reason
                return None
            w = view.layer.weight.const_value.numpy()
            bias = biases.get(view.name)
            b = bias.const_value.numpy() if bias is not None else None  # type: ignore[union-attr]
            new, new_b, outcome = prune_layer(view, w, pattern, criterion, stats.get(view.name), bias=b, recon=recon)
            if runner is None:  # proxy: the layer's own relative output error, squared
                return (outcome.output_rel_error if outcome.output_rel_error is not None else outcome.weight_rel_error) ** 2
            trial = {view.layer.weight.name: new, **({bias.name: new_b} if bias is not None and new_b is not None else {})}
            return runner.outputs(trial)

        return run

    trials = [(v.name, str(c), trial(v, c)) for v in views for c in candidates]
    found = sensitivity_scan(trials, reference, cosine_damage, rows, desc="layer sensitivity", progress=progress)
    table.damage = {str(k): {str(p): d for p, d in curve.items()} for k, curve in found.items()}
    table.seconds = round(time.perf_counter() - start, 3)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table.to_dict()))
    return table


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
