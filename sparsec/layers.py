"""Weight-bearing layers of a graph and the weights behind them.

A layer is a Conv, ConvTranspose, Gemm or MatMul whose weight input traces back (through
Transpose/Identity and `com.sparsec` markers) to an initializer; passes that list "MoE" in
their op types also get each stacked expert projection of a `com.sparsec.MoE` op (w1, w2,
w_up [E, K, C], reduction axis 1) as a layer named `<node>/<projection>`. Knowing the initializer and
which of its axes is the reduction axis is what every sparsity pass and the cost model need;
the initializer's name is the `state_dict` key for models captured from PyTorch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir

from sparsec.dialect import DOMAIN

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    node: ir.Node
    weight: ir.Value  # the initializer
    reduction_axis: int  # axis of the initializer that the op reduces over
    path: tuple[ir.Node, ...]  # nodes between the initializer and the layer (nearest first)
    marker: ir.Node | None  # the com.sparsec node on the path, if the weight is already marked
    part: str = ""  # which of the node's weights (MoE: w1, w2, w_up); "" for single-weight ops

    @property
    def name(self) -> str:
        return f"{layer_name(self.node)}/{self.part}" if self.part else layer_name(self.node)

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.marker is not None and self.marker.op_type == "NMSparse":
            return self.marker.attributes["n"].as_int(), self.marker.attributes["m"].as_int()
        return None


def layer_name(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op_type)


def _weight_input_and_axis(node: ir.Node) -> tuple[int, int] | None:
    """(input index of the weight, reduction axis in the op's view of the weight)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        # Conv W [O, I/g, k...]: reduce over I/g (and the kernel). ConvTranspose W [I, O/g, k...]
        # reduces over I, axis 0.
        return (1, 1) if node.op_type == "Conv" else (1, 0)
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 1, (1 if trans_b is not None and trans_b.as_int() else 0)
    if node.op_type == "MatMul":
        return 1, -2
    return None


def trace_weight(node: ir.Node) -> Layer | None:
    """The initializer behind a layer's weight input, or None if it is not a constant."""
    found = _weight_input_and_axis(node)
    if found is None:
        return None
    return _trace(node, *found)


def _trace(node: ir.Node, index: int, axis: int, part: str = "") -> Layer | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return None
    rank = len(value.shape) if value.shape is not None else None
    path: list[ir.Node] = []
    marker = None
    while value is not None and not value.is_initializer():
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Transpose" and producer.domain in ("", "ai.onnx"):
            perm_attr = producer.attributes.get("perm")
            src = producer.inputs[0]
            src_rank = len(src.shape) if src is not None and src.shape is not None else None
            if src_rank is None:
                return None
            perm = perm_attr.as_ints() if perm_attr is not None else list(range(src_rank))[::-1]
            axis = perm[axis % src_rank]
            rank = src_rank
        elif producer.op_type == "Identity" and producer.domain in ("", "ai.onnx"):
            pass
        elif producer.domain == DOMAIN:
            marker = producer
        else:
            return None
        path.append(producer)
        value = producer.inputs[0]
    if value is None or value.const_value is None:
        return None
    rank = len(value.const_value.shape)
    return Layer(node, value, axis % rank, tuple(path), marker, part)


def moe_layers(node: ir.Node) -> list[Layer]:
    """The expert projections of a `com.sparsec.MoE` node as layers (reduction axis 1: D of
    w1/w_up [E, D, F], F of w2 [E, F, D]); N:M groups then run per expert."""
    from sparsec.dialect.moe import EXPERT_WEIGHTS

    found = (_trace(node, index, 1, part) for part, index in EXPERT_WEIGHTS.items())
    return [layer for layer in found if layer is not None]


def find_layers(model: ir.Model, op_types: tuple[str, ...] = WEIGHT_OPS) -> list[Layer]:
    layers = []
    for node in model.graph:
        if node.domain in ("", "ai.onnx") and node.op_type in op_types:
            layer = trace_weight(node)
            if layer is not None:
                layers.append(layer)
        elif node.domain == DOMAIN and node.op_type == "MoE" and "MoE" in op_types:
            layers.extend(moe_layers(node))
    return layers


def matches_any(names: Iterable[str], globs: Iterable[str]) -> bool:
    """Whether any of `names` (a layer's name, its weight's, a group's parameters') matches
    any of the shell-style `globs` (case-sensitive). The one glob rule of every option that
    selects layers or groups by name."""
    names = list(names)
    return any(fnmatch.fnmatchcase(name, g) for g in globs for name in names)
