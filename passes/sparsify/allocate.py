"""`allocate`: choose a pattern per layer from its measured sensitivity, then apply it.

Two modes:
- a budget: remove `budget` (a fraction) of the model's parameters, MACs, weight bytes or
  predicted latency (`target`) with the least predicted damage;
- a fidelity floor (`min_fidelity`): the most `target` saving whose output keeps a mean
  cosine >= the floor. Predicted damage is only a model, so the choice is applied and
  measured on held-out calibration samples; if it misses the floor, the damage allowance
  shrinks by the observed ratio and the choice is remade (up to `rounds` times; dense
  always meets any floor).
Every layer's choice lands in the manifest with its predicted damage, benefit and why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.allocator import LayerOptions, cap_damage, meet_benefit, totals
from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import CalibrationRunner, output_rows, run_outputs
from sparsec.calib.stats import require_calibration
from sparsec.errors import PipelineError
from sparsec.executor import Executor
from sparsec.layer_view import view_of
from sparsec.layers import Layer, find_layers
from sparsec.passes.analysis.cost_model import (
    block_sparse_weight_bytes,
    estimate_costs,
    sparse_weight_bytes,
)
from sparsec.passes.analysis.sensitivity import (
    NM_CANDIDATES,
    SensitivityTable,
    damage_array,
    scan_sensitivity,
)
from sparsec.passes.sparsify.apply import apply_plan
from sparsec.passes.sparsify.criteria import check_criterion
from sparsec.passes.sparsify.options import LayerSelection, ReconstructionOptions
from sparsec.passes.sparsify.patterns import Pattern, parse_pattern
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass
from sparsec.targets import get_target

log = logging.getLogger("sparsec")
TARGETS = ("sparsity", "macs", "bytes", "latency")
UNITS = {"sparsity": "params", "macs": "MACs", "bytes": "bytes", "latency": "ms"}


@dataclass(frozen=True)
class _LayerCost:
    params: int
    macs: int
    weight_bytes: int
    act_bytes: int
    itemsize: int


def _benefit(cost: _LayerCost, pattern: Pattern, target: str, peak_gflops: float, dram_gbps: float) -> float:
    d = pattern.density
    if pattern.is_dense:
        return 0.0
    if pattern.kind == "nm":
        sparse_bytes = sparse_weight_bytes(cost.params, cost.itemsize, pattern.n, pattern.m)
    else:
        sparse_bytes = block_sparse_weight_bytes(cost.params, cost.itemsize, d, pattern.block)
    if target == "sparsity":
        return cost.params * (1 - d)
    if target == "macs":
        return cost.macs * (1 - d)
    if target == "bytes":
        return float(cost.weight_bytes - sparse_bytes)

    def ms(macs: float, wbytes: float) -> float:
        return max(2 * macs / (peak_gflops * 1e9), (wbytes + cost.act_bytes) / (dram_gbps * 1e9)) * 1e3

    return ms(cost.macs, cost.weight_bytes) - ms(cost.macs * d, sparse_bytes)


def _dense_total(cost: _LayerCost, target: str, peak_gflops: float, dram_gbps: float) -> float:
    if target == "sparsity":
        return cost.params
    if target == "macs":
        return cost.macs
    if target == "bytes":
        return cost.weight_bytes
    return max(2 * cost.macs / (peak_gflops * 1e9), (cost.weight_bytes + cost.act_bytes) / (dram_gbps * 1e9)) * 1e3


def _fidelity(dense_out: list[np.ndarray], model: ir.Model, data: CalibrationData) -> float:
    """Mean output cosine of `model` against the dense outputs on `data` (held-out samples)."""
    rows = output_rows(data, data.batches_for(model), len(dense_out))
    return mean_cosine(dense_out, run_outputs(model, data), rows)


def _measured_rows(model: ir.Model, layers: list[Layer], calib: CalibrationData, dims: dict[str, int]) -> dict[str, int]:
    """Rows of each MatMul/Gemm layer's input for one batch at the cost model's batch size (the
    model's fixed batch, else the `batch` dim, 1 by default), measured on the first calibration
    samples, padding included: the work a layer does when the shape inference behind the cost
    model lost the activation shape."""
    views = [v for v in (view_of(layer) for layer in layers) if v.input_name is not None and v.layer.node.op_type in ("MatMul", "Gemm")]
    if not views:
        return {}
    fixed = model_batch_size(model)
    runner = CalibrationRunner(model, calib.head(fixed or 1), views=views)
    values = next(runner.values([v.input_name for v in views]))  # type: ignore[misc]
    batch = 1 if fixed else int(dims.get("batch", 1))
    return {v.name: v.rows(values[v.input_name]).shape[0] * batch for v in views}  # type: ignore[index]


@register_pass
@dataclass(frozen=True)
class Allocate(LayerSelection, ReconstructionOptions, Pass):
    name = "allocate"
    summary = "Choose a pattern per layer to meet a budget or a fidelity floor, from measured layer sensitivity; apply it."
    exact = False

    candidates: tuple[str, ...] = option(NM_CANDIDATES, "patterns a layer may take (dense is always an option)")
    target: str = option("latency", "what the budget and the savings count: sparsity (params), macs, bytes or latency (predicted)")
    budget: float = option(0.0, "fraction of the model's total `target` to remove (budget mode)")
    min_fidelity: float = option(0.0, "floor on the mean output cosine vs dense on held-out calibration samples (floor mode)")
    criterion: str = option("sparsegpt", "criterion that prunes the chosen layers")
    scan_criterion: str = option("wanda", "criterion used while measuring sensitivity (cheaper than sparsegpt)")
    metric: str = option("output", "sensitivity metric: output or proxy")
    samples: int = option(16, "calibration samples for the sensitivity scan")
    sequential: bool = option(True, "prune stage by stage on the inputs of already-pruned layers")
    rounds: int = option(4, "floor mode: at most this many apply-and-measure rounds")

    def __post_init__(self) -> None:
        for c in self.candidates:
            parse_pattern(c)
        check_criterion(self.criterion, self.name)
        check_criterion(self.scan_criterion, self.name)
        if self.target not in TARGETS:
            raise PipelineError(f"pass 'allocate': unknown target '{self.target}' (known: {', '.join(TARGETS)})")
        if (self.budget > 0) == (self.min_fidelity > 0):
            raise PipelineError("pass 'allocate': give exactly one of budget=FRACTION or min_fidelity=COSINE")
        if not 0 <= self.budget < 1 or not 0 <= self.min_fidelity < 1:
            raise PipelineError("pass 'allocate': budget and min_fidelity must lie in [0, 1)")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        calib = require_calibration(ctx, "allocate")
        fit, held = calib.split(0.75) if calib.num_samples >= 8 else (calib, calib)
        patterns = [parse_pattern(c) for c in self.candidates]
        table = scan_sensitivity(
            model, fit, patterns, criterion=self.scan_criterion, metric=self.metric, samples=self.samples,
            selection=LayerSelection(self.op_types, self.include, self.exclude, self.min_params), recon=self.reconstruction,
            executor=ctx.executor,
        )
        options, layers, grand_total = self._options(model, ctx, table, fit)
        dense_out = run_outputs(model, held)
        rounds: list[dict[str, float]] = []
        if self.min_fidelity > 0:
            picks, trial = self._floor_mode(model, options, layers, fit, held, dense_out, rounds, ctx.executor)
        else:
            picks = meet_benefit(options, self.budget * grand_total)
            # Budget mode holds nothing out for a decision: reconstruct on every sample (the
            # fidelity below is then measured on samples the reconstruction also saw).
            trial = self._apply(model, options, layers, picks, calib, ctx.executor)
            rounds.append({"fidelity": _fidelity(dense_out, trial, held), **totals(options, picks)})
        model.graph = trial.graph
        model.opset_imports.update(trial.opset_imports)
        return self._report(ctx, table, options, layers, picks, rounds, grand_total)

    # -- building blocks -----------------------------------------------------------------
    def _options(
        self, model: ir.Model, ctx: PassContext, table: SensitivityTable, calib: CalibrationData | None = None
    ) -> tuple[list[LayerOptions], list[Layer], float]:
        spec = get_target(ctx.target)
        costs = {c.name: c for c in estimate_costs(model, target=ctx.target, dims=ctx.dims).layers}
        names = ["dense", *[str(parse_pattern(c)) for c in self.candidates]]
        options, layers, grand_total = [], [], 0.0
        all_layers = [layer for layer in find_layers(model) if layer.name in costs]
        unknown = [layer for layer in all_layers if costs[layer.name].macs == 0]
        measured = _measured_rows(model, unknown, calib, ctx.dims) if unknown and calib is not None else {}
        for layer in all_layers:
            c = costs[layer.name]
            tensor = layer.weight.const_value
            macs, act_bytes = c.macs, c.activation_bytes
            if layer.name in measured:  # the cost model could not infer the activation shape: measured
                rows = measured[layer.name]
                k = int(tensor.shape[layer.reduction_axis])
                macs = rows * int(tensor.size)
                act_bytes = rows * (k + int(tensor.size) // k) * int(tensor.dtype.itemsize)
            lc = _LayerCost(int(tensor.size), macs, c.weight_bytes, act_bytes, int(tensor.dtype.itemsize))
            grand_total += _dense_total(lc, self.target, spec.peak_gflops, spec.dram_gbps)
            if layer.name not in table.damage:
                continue
            benefit = np.array([_benefit(lc, parse_pattern(p), self.target, spec.peak_gflops, spec.dram_gbps) for p in names])
            options.append(LayerOptions(layer.name, names, damage_array(table, layer.name, names), benefit))
            layers.append(layer)
        return options, layers, grand_total

    def _apply(
        self, model: ir.Model, options: list[LayerOptions], layers: list[Layer], picks: list[int], fit: CalibrationData,
        executor: Executor | None = None,
    ) -> ir.Model:
        trial = model.clone()
        by_name = {layer.name: layer for layer in find_layers(trial)}
        plan = [(by_name[o.name], parse_pattern(o.patterns[i])) for o, i in zip(options, picks, strict=True) if i > 0]
        apply_plan(trial, plan, self.criterion, fit, sequential=self.sequential, recon=self.reconstruction, executor=executor)
        return trial

    def _floor_mode(
        self, model: ir.Model, options: list[LayerOptions], layers: list[Layer], fit: CalibrationData,
        held: CalibrationData, dense_out: list[np.ndarray], rounds: list[dict[str, float]], executor: Executor | None = None,
    ) -> tuple[list[int], ir.Model]:
        """Search the damage allowance: grow it while the measured fidelity has slack, shrink it
        when the floor is missed (by the observed ratio, then by bisection); keep the best passing."""
        margin = 1.0 - self.min_fidelity
        allowance, lo, hi = margin, None, None
        best: tuple[list[int], ir.Model] | None = None
        tried: set[tuple[int, ...]] = set()
        for _ in range(self.rounds):
            picks = cap_damage(options, allowance)
            if tuple(picks) in tried:
                break  # the allowance no longer changes the choice
            tried.add(tuple(picks))
            trial = self._apply(model, options, layers, picks, fit, executor)
            fid = _fidelity(dense_out, trial, held)
            rounds.append({"allowance": allowance, "fidelity": fid, **totals(options, picks)})
            log.info("allocate: allowance %.3g -> fidelity %.5f (floor %.4f)", allowance, fid, self.min_fidelity)
            ratio = margin / max(1.0 - fid, 1e-12)  # > 1: slack, < 1: missed
            if fid >= self.min_fidelity:
                if best is None or totals(options, picks)["benefit"] > totals(options, best[0])["benefit"]:
                    best = (picks, trial)
                lo = allowance
                allowance = (lo + hi) / 2 if hi is not None else allowance * min(4.0, max(1.25, ratio))
            else:
                hi = allowance
                allowance = (lo + hi) / 2 if lo is not None else allowance * min(0.8, max(0.2, ratio))
        if best is not None:
            final = {"allowance": 0.0, "fidelity": 0.0, **totals(options, best[0])}
            for r in rounds:  # report the round that was kept
                if r["benefit"] == final["benefit"] and r["fidelity"] >= self.min_fidelity:
                    final = r
            rounds.append(dict(final, kept=1.0))
            return best
        log.warning("allocate: no choice met min_fidelity=%g in %d rounds; leaving the model dense", self.min_fidelity, self.rounds)
        dense = [0] * len(options)
        rounds.append({"allowance": 0.0, "fidelity": 1.0, **totals(options, dense)})
        return dense, model.clone()

    def _report(
        self, ctx: PassContext, table: SensitivityTable, options: list[LayerOptions], layers: list[Layer],
        picks: list[int], rounds: list[dict[str, float]], grand_total: float,
    ) -> PassResult:
        unit = UNITS[self.target]
        nm_params = all_params = 0
        for o, layer, i in zip(options, layers, picks, strict=True):
            params = int(layer.weight.const_value.size)
            all_params += params
            chosen = o.patterns[i]
            nm_params += params if ":" in chosen and not chosen.startswith(("u", "b")) else 0
            alternatives = {p: (None if not math.isfinite(d) else round(float(d), 8)) for p, d in zip(o.patterns, o.damage, strict=True)}
            if i == 0:
                why = "dense: every pattern's predicted damage per saving was above the price the budget allowed"
            else:
                why = (
                    f"{chosen}: predicted damage {o.damage[i]:.3g} for {o.benefit[i]:.4g} {unit} saved "
                    f"({o.damage[i] / max(o.benefit[i], 1e-30):.3g} per {unit}), the best trade at the chosen price"
                )
            if table.skipped.get(o.name):
                why += "; not applicable: " + "; ".join(f"{p} ({r})" for p, r in table.skipped[o.name].items())
            ctx.record(
                self.name, o.name, weight=layer.weight.name, decision=chosen, criterion=self.criterion if i else None,
                predicted_damage=round(float(o.damage[i]), 8), benefit=round(float(o.benefit[i]), 6), unit=unit,
                sensitivity=alternatives, why=why,
            )
        final = rounds[-1]
        total_benefit = final["benefit"]
        stats: dict[str, object] = {
            "mode": "min_fidelity" if self.min_fidelity > 0 else "budget",
            "layers_considered": len(options),
            "layers_sparse": sum(1 for i in picks if i > 0),
            "nm_param_fraction": round(nm_params / all_params, 4) if all_params else 0.0,
            "predicted_damage": round(final["predicted_damage"], 6),
            "measured_fidelity": round(final["fidelity"], 6),
            "fidelity_measured_on": "held-out calibration samples" if self.min_fidelity > 0 else "calibration samples (also used to reconstruct)",
            f"{self.target}_saved_fraction": round(total_benefit / grand_total, 4) if grand_total else 0.0,
            "rounds": len([r for r in rounds if "kept" not in r]),
            "sensitivity_seconds": table.seconds,
        }
        if self.target == "latency" and grand_total:
            stats["predicted_speedup"] = round(grand_total / max(grand_total - total_benefit, 1e-30), 4)
        stats["round_log"] = [{k: round(v, 6) for k, v in r.items()} for r in rounds]
        return PassResult(changed=any(i > 0 for i in picks), stats=stats)
