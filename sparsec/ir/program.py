"""Whether two models run the same program: the same ops in the same order on tensors of the
same shapes, whatever the weight values.

A compile whose layers all stay on dense ops (say 2:4 weights for another runtime, or every
layer moved back by the never-slower fallback) runs exactly the work the dense model runs; a
measured difference between the two is the measurement's noise, not a slowdown (a 2-layer MLP
measured 0.85x +-14% beside its dense twin on a busy 2-core machine).
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir


def _attribute(attr: ir.Attr) -> Any:
    if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.SPARSE_TENSOR):  # constants: not their values
        t = attr.value
        return (str(attr.type), str(getattr(t, "dtype", None)), tuple(getattr(t, "shape", ()) or ()))
    return (str(attr.type), repr(attr.value))  # subgraphs too, by their printed form


def _value(v: ir.Value | None) -> Any:
    if v is None:
        return None
    return (str(v.dtype), str(v.shape) if v.shape is not None else None, v.const_value is not None)


def program_signature(model: ir.Model) -> tuple:
    """The model's ops in graph order with their domains, attributes and the dtypes and
    shapes of what they read and write; weight values and names are left out."""
    g = model.graph
    nodes = tuple(
        (n.domain, n.op_type, tuple(sorted((k, _attribute(a)) for k, a in n.attributes.items())),
         tuple(_value(v) for v in n.inputs), tuple(_value(v) for v in n.outputs))
        for n in g
    )
    return (tuple(_value(v) for v in g.inputs), tuple(_value(v) for v in g.outputs), nodes)


def same_program(a: ir.Model, b: ir.Model) -> bool:
    return program_signature(a) == program_signature(b)
