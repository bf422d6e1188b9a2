"""Reference semantics of `com.sparsec` ops in standard ONNX.

Used to evaluate any IR numerically (verify-each, fidelity) and as the dense ONNX Runtime
lowering. Each op's rule rewrites it to plain ONNX with identical outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import onnx_ir as ir

from sparsec.dialect.attention_reference import lower_sparse_attention
from sparsec.dialect.schema import DOMAIN


def _nm_sparse_to_dense(node: ir.Node) -> None:
    # The weight initializer already holds the pruned values: NMSparse is the identity.
    node.outputs[0].replace_all_uses_with(node.inputs[0], replace_graph_outputs=True)
    node.graph.remove(node, safe=True)


REFERENCE_RULES: dict[str, Callable[[ir.Node], None]] = {
    "NMSparse": _nm_sparse_to_dense,
    "Sparse": _nm_sparse_to_dense,  # also the identity on an already-pruned weight
    "SparseAttention": lower_sparse_attention,
}


def lower_to_reference(model: ir.Model, keep: Collection[str] = ()) -> int:
    """Rewrite every `com.sparsec` op of `model` (in place) to standard ONNX, except the op
    types in `keep` (a consumer that runs them itself); returns the count."""
    count = 0
    for node in list(model.graph):
        if node.domain == DOMAIN and node.op_type not in keep:
            rule = REFERENCE_RULES.get(node.op_type)
            if rule is None:
                raise NotImplementedError(f"no reference lowering for {DOMAIN}.{node.op_type}")
            rule(node)
            count += 1
    if not any(n.domain == DOMAIN for n in model.graph):
        model.opset_imports.pop(DOMAIN, None)
    return count
