"""Op schemas of the `com.sparsec` domain and their registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_ir as ir

DOMAIN = "com.sparsec"
OPSET_VERSION = 1


@dataclass(frozen=True)
class AttrSpec:
    type: ir.AttributeType
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class OpSchema:
    """What a `com.sparsec` op looks like, plus a semantic verifier.

    `verifier(node)` returns a list of problems (empty when the node is valid); it runs after
    the structural checks (input/output counts, attribute types) have passed.
    """

    op_type: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, AttrSpec] = field(default_factory=dict)
    optional_inputs: int = 0
    verifier: Callable[[ir.Node], list[str]] | None = None


_SCHEMAS: dict[str, OpSchema] = {}


def register_op(schema: OpSchema) -> OpSchema:
    if schema.op_type in _SCHEMAS:
        raise ValueError(f"op {DOMAIN}.{schema.op_type} is already registered")
    _SCHEMAS[schema.op_type] = schema
    return schema


def get_schema(op_type: str) -> OpSchema | None:
    return _SCHEMAS.get(op_type)


def all_schemas() -> list[OpSchema]:
    return [_SCHEMAS[k] for k in sorted(_SCHEMAS)]


def verify_node(node: ir.Node) -> list[str]:
    """Check a `com.sparsec` node against its schema; returns the list of problems."""
    schema = get_schema(node.op_type)
    if schema is None:
        return [f"unknown op {DOMAIN}.{node.op_type}"]
    problems: list[str] = []
    n_in = len(node.inputs)
    lo, hi = len(schema.inputs) - schema.optional_inputs, len(schema.inputs)
    if not lo <= n_in <= hi:
        problems.append(f"expects {lo}..{hi} inputs, has {n_in}")
    if len(node.outputs) != len(schema.outputs):
        problems.append(f"expects {len(schema.outputs)} outputs, has {len(node.outputs)}")
    for name, spec in schema.attributes.items():
        attr = node.attributes.get(name)
        if attr is None:
            if spec.required:
                problems.append(f"missing attribute '{name}'")
        elif attr.type != spec.type:
            problems.append(f"attribute '{name}' must be {spec.type.name}, is {attr.type.name}")
    for name in node.attributes:
        if name not in schema.attributes:
            problems.append(f"unknown attribute '{name}'")
    if not problems and schema.verifier is not None:
        problems.extend(schema.verifier(node))
    return problems
