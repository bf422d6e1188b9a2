"""Random MoE op models for the op, lowering and kernel tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.passes.moe.experts import Experts


def random_experts(d: int, e: int, f: int, gated: bool, seed: int = 0) -> tuple[Experts, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ex = Experts(w1=r(e, d, f, scale=d**-0.5), b1=r(e, f, scale=0.1), w2=r(e, f, d, scale=(e * f) ** -0.5),
                 b2=r(d, scale=0.1), w_up=r(e, d, f, scale=d**-0.5) if gated else None)
    return ex, r(d, e), r(e, scale=0.1)


def moe_model(shape: tuple[int, ...], ex: Experts, rw: np.ndarray, rb: np.ndarray, top_k: int, activation: str,
              gating: str = "none", opset: int = 18) -> ir.Model:
    """A graph Y = MoE(X) with the expert weights as initializers."""
    d = ex.w1.shape[1]
    x = ir.Value(name="x", shape=ir.Shape(list(shape)), type=ir.TensorType(ir.DataType.FLOAT))
    inits = []
    for name, arr in (("router_weight", rw), ("router_bias", rb), ("w1", ex.w1), ("b1", ex.b1), ("w2", ex.w2),
                      ("b2", ex.b2), ("w_up", ex.w_up)):
        if arr is None:
            continue
        v = ir.Value(name=name, const_value=ir.tensor(arr, name=name))
        v.shape, v.type = ir.Shape(list(arr.shape)), ir.TensorType(ir.DataType.FLOAT)
        inits.append(v)
    node = ir.Node(DOMAIN, "MoE", [x, *inits], attributes=[
        ir.AttrInt64("top_k", top_k), ir.AttrString("activation", activation), ir.AttrString("gating", gating)],
        name="moe", num_outputs=1)
    y = node.outputs[0]
    y.name, y.shape, y.type = "y", ir.Shape([*shape[:-1], d]), ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [y], nodes=[node], initializers=inits, opset_imports={"": opset, DOMAIN: 1}, name="moe")
    return ir.Model(graph, ir_version=10)
