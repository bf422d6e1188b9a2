"""The ops of the `com.sparsec` domain."""

from __future__ import annotations

import onnx_ir as ir

from sparsec.dialect.schema import AttrSpec, OpSchema, register_op
from sparsec.nm_pattern import MAX_M, nm_violations


def _verify_nm_sparse(node: ir.Node) -> list[str]:
    n = node.attributes["n"].as_int()
    m = node.attributes["m"].as_int()
    axis = node.attributes["axis"].as_int()
    if not (1 <= n < m <= MAX_M):
        return [f"invalid pattern {n}:{m} (need 1 <= n < m <= {MAX_M})"]
    weight = node.inputs[0]
    if weight is None or weight.const_value is None:
        return ["input must be a constant weight (an initializer)"]
    w = weight.const_value.numpy()
    if not -w.ndim <= axis < w.ndim:
        return [f"axis {axis} out of range for rank {w.ndim}"]
    if w.shape[axis] % m:
        return [f"axis {axis} has size {w.shape[axis]}, not a multiple of m={m}"]
    bad = nm_violations(w, n, m, axis)
    if bad:
        return [f"{bad} groups of {m} along axis {axis} hold more than {n} nonzeros"]
    out = node.outputs[0]
    if out.shape is not None and tuple(out.shape) != tuple(w.shape):
        return [f"output shape {tuple(out.shape)} differs from weight shape {tuple(w.shape)}"]
    return []


NM_SPARSE = register_op(
    OpSchema(
        op_type="NMSparse",
        doc=(
            "Marks a constant weight as N:M-sparse along `axis`: every group of m consecutive "
            "elements along `axis` holds at most n nonzeros. Semantically the identity; "
            "backends lower it to dense weights or to sparse kernels."
        ),
        inputs=("weight",),
        outputs=("sparse_weight",),
        attributes={
            "n": AttrSpec(ir.AttributeType.INT, doc="kept elements per group"),
            "m": AttrSpec(ir.AttributeType.INT, doc="group size"),
            "axis": AttrSpec(ir.AttributeType.INT, doc="the reduction axis the groups run along"),
        },
        verifier=_verify_nm_sparse,
    )
)
