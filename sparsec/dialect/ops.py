"""The ops of the `com.sparsec` domain."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect.schema import AttrSpec, OpSchema, register_op
from sparsec.nm_pattern import MAX_M, nm_violations


def _constant_weight(node: ir.Node, axis: int) -> np.ndarray | str:
    """The marked weight, or the problem with it (not constant, axis out of range, or an
    output whose declared shape differs)."""
    weight = node.inputs[0]
    if weight is None or weight.const_value is None:
        return "input must be a constant weight (an initializer)"
    w = weight.const_value.numpy()
    if not -w.ndim <= axis < w.ndim:
        return f"axis {axis} out of range for rank {w.ndim}"
    out = node.outputs[0]
    if out.shape is not None and tuple(out.shape) != tuple(w.shape):
        return f"output shape {tuple(out.shape)} differs from weight shape {tuple(w.shape)}"
    return w


def _verify_nm_sparse(node: ir.Node) -> list[str]:
    n = node.attributes["n"].as_int()
    m = node.attributes["m"].as_int()
    axis = node.attributes["axis"].as_int()
    if not (1 <= n < m <= MAX_M):
        return [f"invalid pattern {n}:{m} (need 1 <= n < m <= {MAX_M})"]
    w = _constant_weight(node, axis)
    if isinstance(w, str):
        return [w]
    if w.shape[axis] % m:
        return [f"axis {axis} has size {w.shape[axis]}, not a multiple of m={m}"]
    bad = nm_violations(w, n, m, axis)
    if bad:
        return [f"{bad} groups of {m} along axis {axis} hold more than {n} nonzeros"]
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


def _verify_sparse(node: ir.Node) -> list[str]:
    axis = node.attributes["axis"].as_int()
    block = list(node.attributes["block"].as_ints())
    density = node.attributes["density"].as_float()
    if len(block) != 2 or min(block) < 1:
        return [f"block must be two positive sizes [rows, cols], got {block}"]
    if not 0.0 < density <= 1.0:
        return [f"density must be in (0, 1], got {density}"]
    w = _constant_weight(node, axis)
    if isinstance(w, str):
        return [w]
    # Blocks tile the view [everything else, axis]: rows are outputs, columns the reduction.
    view = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
    bo, bk = block
    if view.shape[0] % bo or view.shape[1] % bk:
        return [f"weight view {view.shape[0]}x{view.shape[1]} is not a multiple of block {bo}x{bk}"]
    tiles = view.reshape(view.shape[0] // bo, bo, view.shape[1] // bk, bk)
    nonzero = np.count_nonzero(np.any(tiles != 0, axis=(1, 3)))
    total = tiles.shape[0] * tiles.shape[2]
    # Rounding to whole blocks may keep one block more than density * total.
    if nonzero > int(np.ceil(density * total - 1e-9)):
        return [f"{nonzero}/{total} blocks of {bo}x{bk} are nonzero, more than density={density:g} allows"]
    return []


SPARSE = register_op(
    OpSchema(
        op_type="Sparse",
        doc=(
            "Marks a constant weight as block-sparse (block [1, 1]: unstructured): in the view "
            "moveaxis(weight, axis, -1).reshape(-1, K), at most `density` of the block x block "
            "tiles hold nonzeros. Semantically the identity; backends lower it to dense weights "
            "or to block-sparse kernels."
        ),
        inputs=("weight",),
        outputs=("sparse_weight",),
        attributes={
            "axis": AttrSpec(ir.AttributeType.INT, doc="the reduction axis"),
            "block": AttrSpec(ir.AttributeType.INTS, doc="[rows, cols] of a block in the view"),
            "density": AttrSpec(ir.AttributeType.FLOAT, doc="upper bound on the fraction of nonzero blocks"),
        },
        verifier=_verify_sparse,
    )
)
