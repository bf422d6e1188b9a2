"""Structural verification of the IR, run before a pipeline and after every pass.

Checks what a rewrite can break: every value used is defined before its use, names are
unique, each op exists (ONNX schema at the model's opset, or a `com.sparsec` schema), and
each `com.sparsec` op passes its own verifier.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
import onnx_ir as ir

from sparsec.dialect import DOMAIN, verify_node
from sparsec.ir.io import opset_version


@dataclass(frozen=True)
class Problem:
    node: str | None
    message: str

    def __str__(self) -> str:
        return f"node '{self.node}': {self.message}" if self.node else self.message


@functools.lru_cache(maxsize=1024)
def _is_onnx_op(op_type: str, opset: int) -> bool:
    """Whether ONNX defines `op_type` at `opset` (memoised: a model repeats few op types many
    times, and verification runs after every pass)."""
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def verify_model(model: ir.Model) -> list[Problem]:
    problems: list[Problem] = []
    graph = model.graph
    defined: set[int] = {id(v) for v in graph.inputs}
    defined |= {id(v) for v in graph.initializers.values()}
    names: dict[str, int] = {}
    # An initializer that is also a graph input (older ONNX) is one Value: count it once.
    unique = {id(v): v for v in list(graph.inputs) + list(graph.initializers.values())}
    for v in unique.values():
        names[v.name] = names.get(v.name, 0) + 1
    opset = opset_version(model)
    for node in graph:
        label = node.name or node.op_type
        for i, value in enumerate(node.inputs):
            if value is not None and id(value) not in defined:
                problems.append(Problem(label, f"input {i} (%{value.name}) is used before it is defined"))
        for out in node.outputs:
            if out.name:
                names[out.name] = names.get(out.name, 0) + 1
            defined.add(id(out))
        if node.domain == DOMAIN:
            if DOMAIN not in model.opset_imports:
                problems.append(Problem(label, f"model does not import the {DOMAIN} opset"))
            problems.extend(Problem(label, p) for p in verify_node(node))
        elif node.domain in ("", "ai.onnx") and not _is_onnx_op(node.op_type, opset):
            problems.append(Problem(label, f"'{node.op_type}' is not an ONNX op at opset {opset}"))
    for out in graph.outputs:
        if id(out) not in defined:
            problems.append(Problem(None, f"graph output %{out.name} is never produced"))
    problems.extend(
        Problem(None, f"value name '{name}' is defined {count} times")
        for name, count in names.items()
        if count > 1
    )
    return problems
