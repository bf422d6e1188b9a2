"""The registry of coupling rules (one function per ONNX op family) and shared helpers.

A rule reads one node and tells the `CouplingBuilder` how the indices of its operands'
axes correspond. Axes a rule does not mention are pinned by the driver, so an op whose
rule is missing or incomplete can only make channels unprunable, never wrongly cropped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from sparsec.passes.structural.coupling import CouplingBuilder

RuleFn = Callable[[ir.Node, CouplingBuilder], None]
RULES: dict[str, RuleFn] = {}


class RuleUnsupported(Exception):
    """This node's configuration is outside the rule; the message is the pin reason."""


def rule(*op_types: str) -> Callable[[RuleFn], RuleFn]:
    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


def const(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind a value (initializer or Constant node), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def attr_int(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return default if a is None else a.as_int()


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    a = node.attributes.get(name)
    return None if a is None else list(a.as_ints())


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def link_same(b: CouplingBuilder, x: ir.Value, y: ir.Value) -> None:
    """y has x's shape and y[..., i, ...] depends on x[..., i, ...] only."""
    for k in range(len(b.shape(x))):
        b.link(b.axis(x, k), b.axis(y, k))


def link_broadcast(b: CouplingBuilder, y: ir.Value, inputs: list[ir.Value | None]) -> None:
    """Numpy-style broadcasting: axes aligned from the right; size-1 axes broadcast."""
    ys = b.shape(y)
    for x in inputs:
        if x is None:
            continue
        xs = b.shape(x)
        for j in range(1, len(xs) + 1):
            xa = b.axis(x, len(xs) - j)
            ya = b.axis(y, len(ys) - j)
            if xs[-j] == ys[-j]:
                b.link(xa, ya)
            else:  # a size-1 axis broadcast against the output
                b.accept(xa, ya)
    for k in range(len(ys)):
        b.accept(b.axis(y, k))


def replace_const_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, tag: str) -> None:
    """Point input `index` of `node` at a fresh initializer holding `array`.

    A fresh one, because shape constants are often shared by many nodes (deduplicated
    by the exporter) and each node's crop may need a different value.
    """
    old = node.inputs[index]
    if old is not None and (current := const(old)) is not None and np.array_equal(current, array):
        return
    base = f"{old.name if old is not None else node.name}__{tag}"
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    value.const_value = ir.tensor(array, name=name)
    graph.register_initializer(value)
    node.replace_input_with(index, value)
