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


def same_model(model: ir.Model, original: ir.Model) -> bool:
    """Whether `model` is still `original` (its structural copy, `ir.Model.clone`): the same
    nodes wired by the same value names, and every weight the very tensor object it started
    with. Clones share tensors and passes replace tensors, never write into them, so this is
    exact without comparing a byte of weight data (BERT-base: 440 MB)."""
    if program_signature(model) != program_signature(original):
        return False
    a, b = model.graph, original.graph
    names = lambda values: [v.name if v is not None else None for v in values]  # noqa: E731
    if names(a.inputs) != names(b.inputs) or names(a.outputs) != names(b.outputs):
        return False
    for x, y in zip(a, b, strict=True):
        if names(x.inputs) != names(y.inputs) or names(x.outputs) != names(y.outputs):
            return False
        for key, attr in x.attributes.items():
            if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.SPARSE_TENSOR) and (
                attr.value is not y.attributes[key].value
            ):
                return False
    if set(a.initializers) != set(b.initializers):
        return False
    return all(v.const_value is b.initializers[k].const_value for k, v in a.initializers.items())
