"""The input signature a TVM artifact records (tvm_signature.json): name, static shape, dtype."""

from __future__ import annotations

import onnx

from sparsec.errors import UnsupportedError

_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def input_signature(proto: onnx.ModelProto, backend: str) -> list[dict]:
    """The graph inputs that are fed (not initializers); a symbolic dimension is an error,
    since TVM builds for static shapes."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if any(d is None for d in dims):
            raise UnsupportedError(f"backend '{backend}': input '{vi.name}' has a symbolic dimension; give it a value with --dim")
        inputs.append({"name": vi.name, "shape": dims, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type))})
    return inputs
