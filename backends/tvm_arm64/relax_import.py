"""ONNX (after sparsec's kernel lowering) -> a Relax IRModule whose N:M layers call the kernels.

TVM's ONNX frontend (`tvm.relax.frontend.onnx.from_onnx`) converts the standard ops; the
kernel ops of domain `com.sparsec.kernels` become `R.call_dps_packed("sparsec_nm_matmul",
(x, values, meta, n, m))`, served by kernels/tvm_arm/sk_tvm_ops.cc linked into the exported
library. The frontend has no hook for extra converters, so one is added to its converter map
for the duration of the import only (`_extra_converters`).

This is the minimum the aarch64 library needs; a full TVM backend (h13's `backends/tvm/`) can
hand its own Relax module to `sparsec.backends.tvm_arm64.library.build_library` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx

from sparsec.backends.ort.sparse_ops import NM_OP
from sparsec.runtime import KERNEL_DOMAIN

PACKED_NM = "sparsec_nm_matmul"  # the symbol exported by kernels/tvm_arm/sk_tvm_ops.cc
KERNEL_OPS = frozenset({NM_OP})  # kernel ops this import turns into packed calls


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """One line per op the Relax import cannot convert (checked at compile time)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"Constant", "If"}
    problems, seen = [], set()
    for node in model.graph.node:
        key = (node.domain, node.op_type)
        if key in seen:
            continue
        seen.add(key)
        if node.domain == KERNEL_DOMAIN:
            if node.op_type not in KERNEL_OPS:
                problems.append(f"kernel op {node.op_type} (node '{node.name}') has no TVM packed function")
        elif node.domain not in ("", "ai.onnx"):
            problems.append(f"op {node.domain}.{node.op_type} (node '{node.name}') has no TVM lowering")
        elif node.op_type not in known:
            problems.append(f"op {node.op_type} (node '{node.name}') is not supported by TVM's ONNX frontend")
    return problems


def to_relax(model: onnx.ModelProto):  # -> tvm.IRModule
    """The Relax module of `model` (weights as constants, N:M layers as packed calls)."""
    from tvm.relax.frontend.onnx import from_onnx

    # TVM's frontend reads only the default domain's opset; ours would be mistaken for it.
    with _extra_converters():
        return from_onnx(model, keep_params_in_input=False)


def _nm_converter():
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    class NMSparseMatMul(OnnxOpConverter):
        """com.sparsec.kernels.NMSparseMatMul(X, values, meta[, bias]), attrs n, m, K, N."""

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x, values, meta = inputs[:3]
            shape = list(x.ty.shape)
            out_ty = relax.TensorType([*shape[:-1], int(attr["N"])], "float32")
            args = [x, values, meta, relax.prim_value(int(attr["n"])), relax.prim_value(int(attr["m"]))]
            y = bb.emit(relax.call_dps_packed(PACKED_NM, args, out_ty=out_ty))
            if int(attr.get("has_bias", 0)) and len(inputs) > 3:
                y = relax.op.add(y, inputs[3])
            return y

    return NMSparseMatMul


@contextlib.contextmanager
def _extra_converters() -> Iterator[None]:
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    extra = {NM_OP: _nm_converter()}

    def convert_map():
        return {**original(), **extra}

    onnx_frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


__all__ = ["PACKED_NM", "to_relax", "unsupported_ops"]
