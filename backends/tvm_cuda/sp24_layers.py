"""Which MatMul/Gemm layers of a legalized model run on sparsec's 2:4 CUDA kernel, and the
ONNX rewrite that hands them to the TVM importer as `com.sparsec.cuda.Sp24MatMul`.

A layer goes to the kernel when its weight is a 2-D initializer [K, C] (Gemm: B, transposed
when transB=1; alpha = beta = 1, no transA) that is 2:4 along K with K a multiple of 64 (the
kernel's tile: one metadata register spans two 32-wide MMA tiles). Its weight is packed once
here (kernels/packing_sparse_tc.py, fp16) into `values`/`meta` initializers; every other layer
stays a dense MatMul/Gemm that TVM schedules with dlight, with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsec.backends.ort_gpu.backend import is_2_4
from sparsec.kernels.packing_sparse_tc import K_MULTIPLE, pack_sparse_tc

DOMAIN = "com.sparsec.cuda"
OP = "Sp24MatMul"
FUNC = "sparsec_cuda_sp24_matmul"


@dataclass
class LayerPlan:
    sparse: list[str] = field(default_factory=list)  # layers calling the 2:4 kernel
    dense: dict[str, str] = field(default_factory=dict)  # layer -> why it runs dense


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray | None, str]:
    """(the layer's [K, C] weight, "") or (None, why it is not a kernel candidate)."""
    if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
        return None, "weight is not a constant second input"
    w = numpy_helper.to_array(inits[node.input[1]])
    if w.ndim != 2 or w.dtype != np.float32:
        return None, f"weight is not a 2-D float32 matrix (shape {list(w.shape)})"
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return None, "Gemm with transA or alpha/beta != 1"
        if _attr(node, "transB", 0):
            w = w.T
    return w, ""


def rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, LayerPlan]:
    """A copy of `model` with every eligible layer as Sp24MatMul(x, values, meta[, bias])."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    plan = LayerPlan()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        w, why = _weight(node, inits)
        if w is None:
            plan.dense[name] = why
        elif w.shape[0] % K_MULTIPLE:
            plan.dense[name] = f"K={w.shape[0]} is not a multiple of {K_MULTIPLE} (the kernel's K tile)"
        elif not is_2_4(w, 0):
            plan.dense[name] = "weight is not 2:4 along K"
        if name in plan.dense:
            nodes.append(node)
            continue
        assert w is not None
        packed = pack_sparse_tc(w, "float16")
        values, meta = f"{name}__sp24_values", f"{name}__sp24_meta"
        graph.initializer.extend([numpy_helper.from_array(packed.values, values),
                                  numpy_helper.from_array(packed.meta, meta)])
        inputs = [node.input[0], values, meta]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            inputs.append(node.input[2])
        nodes.append(helper.make_node(OP, inputs, [node.output[0]], name=name, domain=DOMAIN,
                                      K=int(w.shape[0]), N=int(w.shape[1])))
        plan.sparse.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if plan.sparse and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out, plan


def relax_call(bb: object, inputs: list, attrs: dict) -> object:
    """Sp24MatMul in Relax: x [..., K] fp32 -> [rows, K] fp16 -> the packed kernel -> fp32
    [..., C] (+ bias). The kernel reads fp16 operands and accumulates in fp32 (mma.sp)."""
    from tvm import relax

    x = inputs[0]
    shape = list(x.ty.shape)
    k, cols = int(attrs["K"]), int(attrs["N"])
    rows = 1
    for d in shape[:-1]:
        rows = rows * d
    x2 = bb.normalize(relax.op.astype(relax.op.reshape(x, [rows, k]), "float16"))
    y = bb.normalize(relax.call_dps_packed(FUNC, relax.Tuple([x2, inputs[1], inputs[2]]),
                                           relax.TensorType([rows, cols], "float16")))
    y = relax.op.astype(y, "float32")
    if len(shape) != 2:
        y = relax.op.reshape(y, [*shape[:-1], cols])
    if len(inputs) > 3 and inputs[3] is not None:
        y = relax.op.add(y, inputs[3])
    return y
