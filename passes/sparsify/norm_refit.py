"""Refit LayerNormalization scale and shift after the layers before it were pruned.

A norm's output per channel c is `g_c * n_c + b_c` (n: the normalised input). Pruning
upstream changes n; the two parameters per channel that best map the pruned model's n back
to the dense model's norm output are a closed-form 2x2 least-squares solve on calibration
rows. Only `LayerNormalization` over the last axis with 1-D initializer scale/shift used by
nothing else qualifies (any ONNX graph; other norms are left alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.calib.runner import CalibrationRunner
from sparsec.layer_view import LayerView


@dataclass(frozen=True)
class Norm:
    node: ir.Node
    input_name: str
    output_name: str
    scale: str  # initializer names
    shift: str
    epsilon: float

    @property
    def name(self) -> str:
        return self.node.name or self.output_name


def _private_initializer(value: ir.Value | None, channels: int | None) -> bool:
    if value is None or not value.is_initializer() or value.const_value is None or len(value.uses()) != 1:
        return False
    shape = tuple(value.const_value.shape)
    return len(shape) == 1 and (channels is None or shape[0] == channels) and value.const_value.dtype == ir.DataType.FLOAT


def find_norms(model: ir.Model) -> list[Norm]:
    norms = []
    for node in model.graph:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
            continue
        x, scale, shift = node.inputs[0], node.inputs[1], node.inputs[2]
        axis = node.attributes.get("axis")
        rank = len(x.shape) if x is not None and x.shape is not None else None
        if x is None or (axis is not None and axis.as_int() != -1 and (rank is None or axis.as_int() != rank - 1)):
            continue
        if any(out is not None and out.uses() for out in node.outputs[1:]):
            continue  # Mean / InvStdDev outputs in use
        channels = int(scale.const_value.shape[0]) if scale is not None and scale.const_value is not None else None
        if not (_private_initializer(scale, channels) and _private_initializer(shift, channels)):
            continue
        eps = node.attributes.get("epsilon")
        norms.append(Norm(node, x.name, node.outputs[0].name, scale.name, shift.name, eps.as_float() if eps is not None else 1e-5))  # type: ignore[union-attr]
    return norms


def upstream_layers(model: ir.Model, views: Sequence[LayerView], norms: Sequence[Norm]) -> dict[str, frozenset[str]]:
    """For each norm, the names of the `views` whose outputs reach its input."""
    by_node = {id(v.layer.node): v.name for v in views}
    reach: dict[int, frozenset[str]] = {}
    wanted = {id(n.node): n for n in norms}
    result: dict[str, frozenset[str]] = {}
    for node in model.graph:  # topological order
        up: frozenset[str] = frozenset().union(*(reach.get(id(v), frozenset()) for v in node.inputs if v is not None))
        if id(node) in wanted:
            result[wanted[id(node)].name] = up
        if id(node) in by_node:
            up = up | {by_node[id(node)]}
        for out in node.outputs:
            reach[id(out)] = up
    return result


def normalise(x: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def fit_affine(n: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per column c, (g_c, b_c) minimising ||g_c n[:, c] + b_c - y[:, c]||^2 (rows on axis 0)."""
    return solve_affine(*affine_sums(n, y), ridge=ridge)


Sums = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def affine_sums(n: np.ndarray, y: np.ndarray) -> Sums:
    """(sum n, sum n^2, sum y, sum n*y, rows) per column: all the 2x2 solve needs."""
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return n.sum(0), (n * n).sum(0), y.sum(0), (n * y).sum(0), n.shape[0]


def solve_affine(
    sn: np.ndarray, snn: np.ndarray, sy: np.ndarray, sny: np.ndarray, count: int, ridge: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    # Normal equations [[snn, sn], [sn, count]] [g, b] = [sny, sy], per channel.
    a = snn + ridge * count
    det = a * count - sn * sn
    g = (sny * count - sn * sy) / det
    b = (a * sy - sn * sny) / det
    return g, b


def refit_norms(runner: CalibrationRunner, norms: Iterable[Norm], params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """New scale/shift per norm (initializer name -> array), fitted on the runner's calibration data:
    the pruned model (`params` overriding the weights) feeds n, the dense model gives the target."""
    norms = list(norms)
    inputs = [n.input_name for n in norms]
    outputs = [n.output_name for n in norms]
    pairs = zip(runner.values(inputs, params, real_rows=True), runner.values(outputs, None, real_rows=True), strict=True)
    return refit_from(norms, pairs)


def refit_from(norms: Sequence[Norm], pairs: Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """As `refit_norms`, from per-batch (pruned model's norm inputs, dense model's norm outputs)."""
    if not norms:
        return {}
    sums: dict[str, Sums] = {}
    for pruned, dense in pairs:
        for norm in norms:
            x = normalise(pruned[norm.input_name], norm.epsilon)
            y = np.asarray(dense[norm.output_name], dtype=np.float64).reshape(x.shape)
            part = affine_sums(x, y)
            acc = sums.get(norm.name)
            sums[norm.name] = part if acc is None else tuple(a + b for a, b in zip(acc, part, strict=True))  # type: ignore[assignment]
    new: dict[str, np.ndarray] = {}
    for norm in norms:
        g, b = solve_affine(*sums[norm.name])
        new[norm.scale] = g.astype(np.float32)
        new[norm.shift] = b.astype(np.float32)
    return new
