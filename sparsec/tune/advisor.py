"""Per-layer lowering choices for a model: which N:M layers the CPU target runs faster sparse.

Used by `nm-sparsity{only_faster=true}` (do not prune what will not run faster) and by
`lower-nm-kernels` (lower what was measured faster). With tuning off (`ctx.tune` false) the
fixed thresholds that were chosen on one CPU decide instead, and every choice says so.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from sparsec.layers import Layer
from sparsec.tune.tuner import Choice, Tuner
from sparsec.tune.variants import DENSE, LayerShape

MAX_COPIES = 8  # layers of one shape timed together (enough to see cache effects)
MAX_TUNE_BYTES = 256 << 20  # weights of one tuning model

# The fixed rules used before tuning existed (chosen on one AVX-512 EPYC, 2 threads).
THRESHOLD_MIN_PARAMS = 65536
THRESHOLD_MAX_ROWS_HALF = 16
THRESHOLD_MIN_ROWS_HALF_BATCHED = 64


@dataclass(frozen=True)
class Thresholds:
    min_params: int = THRESHOLD_MIN_PARAMS
    max_rows_half: int = THRESHOLD_MAX_ROWS_HALF
    min_rows_half_batched: int = THRESHOLD_MIN_ROWS_HALF_BATCHED

    def choose_shape(self, shape: LayerShape) -> Choice:
        why = None
        if shape.op != "matmul":
            why = f"no kernel for {shape.op} layers"
        elif shape.weight_params < self.min_params:
            why = f"{shape.weight_params} parameters < min_params={self.min_params}"
        elif 2 * shape.n >= shape.m and self.max_rows_half < shape.rows < self.min_rows_half_batched:
            why = (f"{shape.rows} rows per call, between max_rows_half={self.max_rows_half} and "
                   f"min_rows_half_batched={self.min_rows_half_batched} for {shape.n}:{shape.m}")
        note = " (fixed thresholds: tuning is off)"
        if why is not None:
            return Choice(shape.key, DENSE, None, None, None, None, why + note)
        return Choice(shape.key, "nm-kernel", None, None, "nm-kernel", None, "within the fixed thresholds" + note)


def layer_shape(layer: Layer, shapes: Any, n: int, m: int, threads: int) -> LayerShape | str:
    """The tuning key of a layer (copies 1), or why it has none."""
    w = layer.weight.const_value
    x_shape = shapes.shape(layer.node.inputs[0])
    if x_shape is None:
        return "input shape unknown (give --dims)"
    if layer.node.op_type in ("MatMul", "Gemm"):
        if len(w.shape) != 2:
            return f"weight has rank {len(w.shape)}, kernels take 2-D weights"
        k = int(w.shape[layer.reduction_axis])
        cols = int(w.size) // k
        rows = int(math.prod(x_shape[:-1])) if layer.node.op_type == "MatMul" else int(x_shape[0])
        return LayerShape("matmul", (k, cols), rows, n, m, threads)
    if layer.node.op_type == "Conv":
        a = layer.node.attributes
        ints = lambda name, default: list(a[name].as_ints()) if name in a else default  # noqa: E731
        if a.get_int("group", 1) != 1 or ints("dilations", [1, 1]) != [1, 1] or len(w.shape) != 4 or len(x_shape) != 4:
            return "grouped, dilated or not 2-D: no sparse conv kernel"
        if a.get_string("auto_pad", "NOTSET") not in ("NOTSET", ""):
            return "auto_pad: give explicit pads"
        dims = tuple(int(d) for d in w.shape) + tuple(int(d) for d in x_shape[2:])
        return LayerShape("conv", dims + tuple(ints("strides", [1, 1])) + tuple(ints("pads", [0, 0, 0, 0])),
                          int(x_shape[0]), n, m, threads)
    return f"no tuning key for {layer.node.op_type} layers"


def plan_layers(model: ir.Model, layers: list[Layer], n: int, m: int, ctx: Any) -> dict[str, Choice | str]:
    """Weight name -> the choice for it (or why none could be made), one measurement per distinct shape."""
    from sparsec.ir.shapes import infer_concrete_shapes

    if not layers:
        return {}
    shapes = infer_concrete_shapes(model, ctx.dims)
    threads = ctx.threads
    keyed: dict[str, LayerShape | str] = {lay.weight.name: layer_shape(lay, shapes, n, m, threads) for lay in layers}
    counts = Counter(s for s in keyed.values() if isinstance(s, LayerShape))
    if not ctx.tune:
        rules = Thresholds()
        return {name: rules.choose_shape(s) if isinstance(s, LayerShape) else s for name, s in keyed.items()}
    ctx.logger.info("tuning %d distinct layer shape(s) for %d:%d on this machine (cached per CPU)",
                    len({(s.op, s.dims, s.rows) for s in counts}), n, m)
    tuner = tuner_for(ctx)
    done: dict[LayerShape, Choice] = {}
    out: dict[str, Choice | str] = {}
    for name, s in keyed.items():
        if isinstance(s, str):
            out[name] = s
            continue
        if s not in done:
            per_copy = max(1, s.weight_params * 4)
            copies = max(1, min(counts[s], MAX_COPIES, MAX_TUNE_BYTES // per_copy))
            done[s] = tuner.choose(LayerShape(s.op, s.dims, s.rows, s.n, s.m, s.threads, copies))
        out[name] = done[s]
    for lay in layers:
        got = out.get(lay.weight.name)
        if got is None:
            continue
        info = {"reason": got} if isinstance(got, str) else {"shape": got.key, **got.to_dict(), "cached": got.cached}
        ctx.measured[lay.weight.name] = {"layer": lay.name, **info}
    return out


def tuner_for(ctx: Any) -> Tuner:
    """One tuner per pass context (the cache file is read once per compile)."""
    if ctx.tuner is None or ctx.tuner.threads != ctx.threads:
        ctx.tuner = Tuner(threads=ctx.threads)
    return ctx.tuner
