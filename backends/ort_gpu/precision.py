"""Emulate fp16/bf16 tensor-core precision on ONNX Runtime's CPU provider.

The GPU runs fp16 (or bf16) operands with fp32 accumulation; on a machine without one the
fidelity of a `--target=cuda` artifact is measured on a copy of the model where every float
weight is rounded to that precision and every float graph input and every MatMul/Gemm/Conv
output is rounded through a Cast pair (the activation is stored in fp16 between layers while
the op itself accumulates in fp32, as on the tensor cores). Elementwise ops and reductions
stay fp32, so this is a lower bound on the rounding a full-fp16 engine adds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.kernels.packing_sparse_tc import round_to

ROUNDED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_LARGEST = {"float16": 65504.0, "bfloat16": float(np.array(0x7F7F0000, dtype=np.uint32).view(np.float32))}
_ONNX_TYPE = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}


def emulate_precision(model_bytes: bytes, dtype: str = "float16") -> bytes:
    """The model with fp16/bf16 rounding of weights and activations (see module doc)."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    low = _ONNX_TYPE[dtype]
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(round_weight(numpy_helper.to_array(init), dtype), init.name))
    initializers = {i.name for i in graph.initializer}
    renamed: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    for inp in graph.input:
        if inp.name not in initializers and inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            renamed[inp.name] = f"{inp.name}__sparsec_rounded"
            head.extend(_round_trip(inp.name, renamed[inp.name], low))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        nodes.append(node)
        if node.op_type in ROUNDED_OPS and node.domain in ("", "ai.onnx"):
            out = node.output[0]
            node.output[0] = f"{out}__sparsec_fp32"
            nodes.extend(_round_trip(node.output[0], out, low))
    del graph.node[:]
    graph.node.extend(head + nodes)
    return model.SerializeToString()


def round_weight(w: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """`w` rounded to fp16/bf16, finite values out of the type's range clamped to its largest
    finite value first (+-65504 for fp16), as TensorRT clamps such weights: exporters write
    attention masks' fill value as float32's minimum (-3.4e38), which a plain cast turns into
    -inf (in bf16 too: it rounds up past bf16's largest) and a NaN where a row is fully
    masked. Infinities and NaNs stay what they are."""
    w = np.asarray(w, dtype=np.float32)
    top = _LARGEST[dtype]
    return round_to(np.where(np.isfinite(w), np.clip(w, -top, top), w).astype(np.float32), dtype)


def _round_trip(src: str, dst: str, low: int) -> list[onnx.NodeProto]:
    mid = f"{dst}__sparsec_low"
    return [
        helper.make_node("Cast", [src], [mid], to=low, name=f"{mid}_cast"),
        helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"{dst}__sparsec_cast_back"),
    ]
