"""A deterministic, readable text form of the IR.

Large constants are elided to dtype, shape and a short content hash, so dumps stay small
and stable across runs; tests compare IR as this text.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

INLINE_LIMIT = 8  # constants with at most this many elements are printed in full


def tensor_digest(tensor: ir.TensorProtocol) -> str:
    return hashlib.sha1(tensor.tobytes()).hexdigest()[:8]


def format_type(value: ir.Value) -> str:
    dtype = value.dtype.short_name() if value.dtype is not None else "?"
    if value.shape is None:
        return f"{dtype}[?]"
    dims = ",".join(str(d) if isinstance(d, int) else (d.value or "?") for d in value.shape)
    return f"{dtype}[{dims}]"


def format_tensor(tensor: ir.TensorProtocol) -> str:
    dtype = tensor.dtype.short_name()
    shape = ",".join(str(d) for d in tensor.shape)
    if tensor.size <= INLINE_LIMIT:
        values = np.asarray(tensor.numpy()).reshape(-1).tolist()
        return f"{dtype}[{shape}] {values}"
    return f"{dtype}[{shape}] <sha1:{tensor_digest(tensor)}>"


def format_attr(attr: ir.Attr) -> str:
    value = attr.value
    if isinstance(value, ir.TensorProtocol):
        return f"{attr.name}={format_tensor(value)}"
    if isinstance(value, ir.Graph):
        return f"{attr.name}=<graph {value.name}>"
    if isinstance(value, float):
        return f"{attr.name}={value:g}"
    if isinstance(value, (list, tuple)):
        return f"{attr.name}=[{', '.join(str(v) for v in value)}]"
    return f"{attr.name}={value!r}" if isinstance(value, str) else f"{attr.name}={value}"


def format_node(node: ir.Node) -> str:
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    ins = ", ".join("%" + v.name if v is not None else "None" for v in node.inputs)
    op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    attrs = ""
    if node.attributes:
        attrs = "<" + ", ".join(format_attr(a) for _, a in sorted(node.attributes.items())) + ">"
    return f"{outs} = {op}{attrs}({ins})"


def print_ir(model: ir.Model) -> str:
    """Return the text form of a model (graph inputs, initializers, nodes, outputs)."""
    g = model.graph
    opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in sorted(model.opset_imports.items()))
    lines = [f"model ir={model.ir_version} opsets=[{opsets}]", f"graph {g.name or 'main'} ("]
    for v in g.inputs:
        lines.append(f"  %{v.name}: {format_type(v)}")
    lines.append(") {")
    for name in sorted(g.initializers):
        init = g.initializers[name]
        if init.const_value is not None:
            lines.append(f"  init %{name} = {format_tensor(init.const_value)}")
    for node in g:
        lines.append("  " + format_node(node))
    lines.append("  return " + ", ".join(f"%{v.name}: {format_type(v)}" for v in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
