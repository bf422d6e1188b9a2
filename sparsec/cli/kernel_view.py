"""`inspect`'s view of an artifact: kernel ops raised back to the layers they implement.

(`sparsec finetune` raises them too, to train the weights: `MoEFFN` becomes `com.sparsec.MoE`.)

A compiled model runs `com.sparsec.kernels.NMSparseMatMul(X, values, meta[, bias])` and
`BlockSparseMatMul(X, tile_ptr, kidx, values[, bias])` on packed weights, which the cost
model does not know. Each is rewritten here into `MatMul(X, com.sparsec.NMSparse|Sparse(W))`
(`+ Add(bias)`) with W unpacked (the exact inverse of the packing), so the cost table shows
the layer with its pattern. For inspection only: the artifact itself is not touched.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.errors import InputError
from sparsec.runtime import KERNEL_DOMAIN

# Width of the column tiles the kernels pack weights into (kernels/packing_*.py).
_TILE = 16
# Suffixes the lowerings give a layer's first packed input after its weight's name
# (lower-nm-kernels: `W.nm_values`; sparse_ops.block_matmul_node: `NAME.tile_ptr`).
_PACKED_SUFFIXES = (".nm_values", ".tile_ptr")
# Node-name suffix lower-nm-kernels appends to the layer it replaces.
_KERNEL_NODE_SUFFIX = "/nm_kernel"


def raise_kernel_ops(model: ir.Model, variants: dict[str, str] | None = None) -> int:
    """Rewrite every kernel op of `model` (in place) as above; returns how many.

    Raised weights and layers get back the names they had before lowering, so lowering the
    result again (`sparsec finetune`) writes the same initializer names. With `variants`,
    each raised N:M weight's kernel variant (`sparsec.tune.variants`) is recorded there, for a
    re-lowering that replays the compile's choices instead of measuring again."""
    from sparsec.kernels import PackedFormatError
    from sparsec.kernels.packing_block import PackedBlock
    from sparsec.kernels.packing_nm import PackedNM

    graph = model.graph
    count = 0
    for node in list(graph):
        if node.domain != KERNEL_DOMAIN:
            continue
        if node.op_type == "SparseAttention":  # back to com.sparsec.SparseAttention (no weights)
            from sparsec.backends.ort.lower_attention import raise_attention_kernel

            raise_attention_kernel(model, node)
            count += 1
            continue
        if node.op_type == "MoEFFN":  # back to com.sparsec.MoE (N:M experts unpacked and marked)
            from sparsec.backends.ort.lower_moe_kernels import raise_moe_kernel

            raise_moe_kernel(model, node)
            count += 1
            continue
        if node.op_type in ("SparseConv", "SparseConvNchwc"):  # conv kernels stay as they are
            continue
        attrs = node.attributes
        k, cols = attrs["K"].as_int(), attrs["N"].as_int()
        has_bias = attrs.get("has_bias") is not None and attrs["has_bias"].as_int() != 0
        packed_inputs = node.inputs[1:-1] if has_bias else node.inputs[1:]
        arrays = [_constant(v, node) for v in packed_inputs]
        try:
            if node.op_type == "NMSparseMatMul":
                n, m = attrs["n"].as_int(), attrs["m"].as_int()
                w = PackedNM.from_arrays(n, m, k, cols, *arrays).to_dense()
                marker_attrs = [ir.AttrInt64("n", n), ir.AttrInt64("m", m), ir.AttrInt64("axis", 0)]
                marker_op = "NMSparse"
            elif node.op_type == "BlockSparseMatMul":
                packed = PackedBlock.from_arrays(attrs["bk"].as_int(), k, cols, *arrays)
                w = packed.to_dense()
                # Blocks are bk rows of K by one 16-column tile: [16, bk] in the marker's view W.T.
                marker_attrs = [
                    ir.AttrInt64("axis", 0),
                    ir.AttrInt64s("block", [_TILE, packed.bk]),
                    ir.AttrFloat32("density", float(packed.density)),
                ]
                marker_op = "Sparse"
            else:
                raise InputError(f"unknown kernel op {KERNEL_DOMAIN}.{node.op_type} (node '{node.name}')")
        except (PackedFormatError, TypeError) as e:
            raise InputError(f"kernel op '{node.name}': malformed packed weight ({e})") from None
        base = node.name.removesuffix(_KERNEL_NODE_SUFFIX) if node.name else f"kernel_{count}"
        weight_name = _original_weight_name(packed_inputs[0].name or "", graph) or f"{base}.weight"
        weight = ir.Value(name=weight_name, const_value=ir.tensor(np.ascontiguousarray(w, dtype=np.float32)))
        graph.register_initializer(weight)
        marker = ir.Node(DOMAIN, marker_op, [weight], attributes=marker_attrs, name=f"{base}/marker")
        matmul = ir.Node("", "MatMul", [node.inputs[0], marker.outputs[0]], name=base)
        new_nodes = [marker, matmul]
        result = matmul.outputs[0]
        if has_bias:
            add = ir.Node("", "Add", [result, node.inputs[-1]], name=f"{base}/bias")
            new_nodes.append(add)
            result = add.outputs[0]
        if variants is not None and node.op_type == "NMSparseMatMul":
            variants[weight_name] = _variant_of(node)
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], new_nodes, [node.outputs[0]], [result]
        )
        for value in packed_inputs:
            if not value.uses() and value.name in graph.initializers and not value.is_graph_output():
                graph.initializers.pop(value.name)
        count += 1
    if count:
        model.opset_imports.setdefault(DOMAIN, 1)
        if not any(n.domain == KERNEL_DOMAIN for n in graph):
            model.opset_imports.pop(KERNEL_DOMAIN, None)
    return count


def _original_weight_name(packed_name: str, graph: ir.Graph) -> str | None:
    """The lowered weight's name, read off its packed input's name; None when that name is not
    one a lowering writes or is taken by another value."""
    for suffix in _PACKED_SUFFIXES:
        if packed_name.endswith(suffix):
            name = packed_name.removesuffix(suffix)
            taken = name in graph.initializers or any(v.name == name for v in graph.inputs)
            return None if taken or not name else name
    return None


def _variant_of(node: ir.Node) -> str:
    """The tuner variant whose extra attributes the kernel node carries (the most specific)."""
    from sparsec.tune.variants import DENSE, variants_for

    attrs = {name: a.value for name, a in node.attributes.items()}
    fitting = [v for v in variants_for("matmul").values()
               if v.name != DENSE and all(attrs.get(k) == val for k, val in v.attrs)]
    return max(fitting, key=lambda v: len(v.attrs)).name if fitting else "nm-kernel"


def _constant(value: ir.Value | None, node: ir.Node) -> np.ndarray:
    if value is None or value.const_value is None:
        raise InputError(f"kernel op '{node.name}': packed weights must be constant initializers")
    return value.const_value.numpy()
