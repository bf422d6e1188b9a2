"""`com.sparsec.MoE`: a routed mixture-of-experts FFN, and its reference lowering.

    MoE(X, router_weight, router_bias, w1, b1, w2, b2[, w_up])  attrs top_k, activation, gating

X [..., D]; router_weight [D, E], router_bias [E]; expert weights stacked along a leading
expert axis: w1 [E, D, F], b1 [E, F], w2 [E, F, D], optional w_up [E, D, F] (gated FFNs:
act(x @ w1[e] + b1[e]) * (x @ w_up[e])); b2 [D] is the dense down projection's bias, added
once. Each token's router logits `x @ router_weight + router_bias` select its `top_k`
experts; gating `none` sums the selected experts' outputs (MoEfication: with top_k = E the
op is exactly the dense FFN), `softmax` weights them by the softmax of their logits (Mixtral:
the top-k weights renormalised), `softmax_all` by their entries of the softmax over all E
logits, not renormalised (Qwen-MoE's `norm_topk_prob=False`: the weights sum to < 1).

The expert weights w1, w2, w_up may be N:M-marked (`NMSparse`/`Sparse` on the initializer,
groups along each expert's reduction axis 1: D for w1/w_up, F for w2), as `nm-sparsity` leaves
them; the op reads the pruned initializer behind the marker.

The reference lowering is masked dense standard ONNX (TopK + ScatterElements build a
[..., E] gate, a block-indicator MatMul spreads it over the F neurons of each expert), so
any runtime runs the op; backends with a kernel read only the selected experts' weights.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from sparsec.dialect.reference import REFERENCE_RULES
from sparsec.dialect.schema import DOMAIN, AttrSpec, OpSchema, register_op
from sparsec.ir.rewrite import replace_value

MOE_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
MOE_GATINGS = ("none", "softmax", "softmax_all")
# Integer codes of activation and gating in the kernel op's attributes (kernels/src/moe_*.c).
ACTIVATION_CODES = {name: i for i, name in enumerate(MOE_ACTIVATIONS)}
GATING_CODES = {name: i for i, name in enumerate(MOE_GATINGS)}
INPUTS = ("X", "router_weight", "router_bias", "w1", "b1", "w2", "b2", "w_up")
# Input index of each expert projection; its reduction axis is 1 in every case.
EXPERT_WEIGHTS = {"w1": 3, "w2": 5, "w_up": 7}
MARKERS = ("NMSparse", "Sparse")


def expert_weight(value: ir.Value | None) -> tuple[ir.Value | None, ir.Node | None]:
    """(the constant behind an input, the sparsity marker in between or None): the input itself
    when it is constant, the marker's initializer when it is a marked weight, else (None, None)."""
    if value is None or value.const_value is not None:
        return value, None
    marker = value.producer()
    if marker is not None and marker.domain == DOMAIN and marker.op_type in MARKERS:
        inner = marker.inputs[0]
        if inner is not None and inner.const_value is not None:
            return inner, marker
    return None, None


def _arrays(node: ir.Node) -> dict[str, np.ndarray] | str:
    out: dict[str, np.ndarray] = {}
    for name, value in zip(INPUTS[1:], node.inputs[1:], strict=False):
        if value is None:
            continue
        const = expert_weight(value)[0] if name in EXPERT_WEIGHTS else value
        if const is None or const.const_value is None:
            return f"input '{name}' must be a constant initializer" + (" (or a marked one)" if name in EXPERT_WEIGHTS else "")
        out[name] = const.const_value.numpy()
    return out


def moe_dims(node: ir.Node) -> tuple[int, int, int]:
    """(D, E, F) of a verified MoE node."""
    e, d, f = expert_weight(node.inputs[3])[0].const_value.shape  # type: ignore[union-attr]
    return int(d), int(e), int(f)


def _verify_moe(node: ir.Node) -> list[str]:
    arrays = _arrays(node)
    if isinstance(arrays, str):
        return [arrays]
    need = ("router_weight", "router_bias", "w1", "b1", "w2", "b2")
    missing = [n for n in need if n not in arrays]
    if missing:
        return [f"missing input(s) {', '.join(missing)}"]
    w1 = arrays["w1"]
    if w1.ndim != 3:
        return [f"w1 must be [E, D, F], has shape {list(w1.shape)}"]
    e, d, f = w1.shape
    expected = {"router_weight": (d, e), "router_bias": (e,), "b1": (e, f), "w2": (e, f, d), "b2": (d,),
                "w_up": (e, d, f)}
    problems = [
        f"{name} has shape {list(arrays[name].shape)}, expected {list(shape)}"
        for name, shape in expected.items()
        if name in arrays and tuple(arrays[name].shape) != shape
    ]
    problems += [f"{name} must be float32" for name, a in arrays.items() if a.dtype != np.float32]
    top_k = node.attributes["top_k"].as_int()
    if not 1 <= top_k <= e:
        problems.append(f"top_k={top_k} must be in [1, E={e}]")
    act = node.attributes["activation"].as_string()
    if act not in MOE_ACTIVATIONS:
        problems.append(f"activation '{act}' is not one of {', '.join(MOE_ACTIVATIONS)}")
    gating = node.attributes["gating"].as_string()
    if gating not in MOE_GATINGS:
        problems.append(f"gating '{gating}' is not one of {', '.join(MOE_GATINGS)}")
    x = node.inputs[0]
    if x is not None and x.shape is not None and len(x.shape) and isinstance(x.shape[-1], int) and x.shape[-1] != d:
        problems.append(f"X has {x.shape[-1]} features, the experts take D={d}")
    return problems


MOE = register_op(
    OpSchema(
        op_type="MoE",
        doc=__doc__.split("\n\n", 1)[1].strip(),
        inputs=INPUTS,
        outputs=("Y",),
        attributes={
            "top_k": AttrSpec(ir.AttributeType.INT, doc="experts run per token"),
            "activation": AttrSpec(ir.AttributeType.STRING, doc="relu, gelu, gelu_tanh or silu"),
            "gating": AttrSpec(ir.AttributeType.STRING, doc="none (sum), softmax (selected logits' softmax) or softmax_all (softmax over all E, top-k entries)"),
        },
        optional_inputs=1,
        verifier=_verify_moe,
    )
)


class _Builder:
    """Appends standard-ONNX nodes before `anchor`, with unique names under `base`."""

    def __init__(self, anchor: ir.Node, base: str) -> None:
        self.anchor, self.base, self.count = anchor, base, 0

    def const(self, array: np.ndarray, tag: str) -> ir.Value:
        self.count += 1
        name = f"{self.base}/{tag}_{self.count}"
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.anchor.graph.register_initializer(value)
        return value

    def op(self, op_type: str, *inputs: ir.Value, outputs: int = 1, **attrs: object) -> ir.Value | tuple[ir.Value, ...]:
        self.count += 1
        node = ir.Node("", op_type, list(inputs), attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
                       name=f"{self.base}/{op_type}_{self.count}", num_outputs=outputs)
        self.anchor.graph.insert_before(self.anchor, node)
        for o in node.outputs:
            o.name = node.name
        if outputs > 1:
            for i, o in enumerate(node.outputs):
                o.name = f"{node.name}:{i}"
            return tuple(node.outputs)
        return node.outputs[0]


def _activation(b: _Builder, h: ir.Value, act: str) -> ir.Value:
    """act(h) in ops every opset >= 13 has (Gelu is an op only from opset 20)."""
    if act == "relu":
        return b.op("Relu", h)
    half = b.const(np.array(0.5, np.float32), "half")
    one = b.const(np.array(1.0, np.float32), "one")
    if act == "silu":
        return b.op("Mul", h, b.op("Sigmoid", h))
    if act == "gelu":
        inner = b.op("Erf", b.op("Mul", h, b.const(np.array(1 / math.sqrt(2.0), np.float32), "rsqrt2")))
    else:  # gelu_tanh
        cube = b.op("Mul", b.op("Mul", h, h), h)
        poly = b.op("Add", h, b.op("Mul", cube, b.const(np.array(0.044715, np.float32), "c")))
        inner = b.op("Tanh", b.op("Mul", poly, b.const(np.array(math.sqrt(2 / math.pi), np.float32), "s")))
    return b.op("Mul", b.op("Mul", h, half), b.op("Add", inner, one))


def flat_experts(w: np.ndarray, *, rows: bool) -> np.ndarray:
    """Stacked expert weights as one dense matrix: w1/w_up [E, D, F] -> [D, E*F] (neurons
    expert-major), w2 [E, F, D] -> [E*F, D]."""
    e = w.shape[0]
    if rows:
        return np.ascontiguousarray(w.reshape(e * w.shape[1], w.shape[2]))
    return np.ascontiguousarray(np.transpose(w, (1, 0, 2)).reshape(w.shape[1], e * w.shape[2]))


def _moe_to_dense(node: ir.Node) -> None:
    arrays = _arrays(node)
    assert not isinstance(arrays, str)
    x = node.inputs[0]
    e, _, f = arrays["w1"].shape
    top_k = node.attributes["top_k"].as_int()
    act = node.attributes["activation"].as_string()
    gating = node.attributes["gating"].as_string()
    b = _Builder(node, node.name or node.outputs[0].name)
    logits = b.op("Add", b.op("MatMul", x, node.inputs[1]), node.inputs[2])
    k = b.const(np.array([top_k], np.int64), "k")
    if gating == "softmax_all":  # softmax is monotone: TopK of the probabilities picks the same experts
        values, indices = b.op("TopK", b.op("Softmax", logits, axis=-1), k, outputs=2, axis=-1)
    else:
        values, indices = b.op("TopK", logits, k, outputs=2, axis=-1)
    if gating == "softmax_all":
        updates = values
    elif gating == "softmax":
        updates = b.op("Softmax", values, axis=-1)
    else:
        updates = b.op("Expand", b.const(np.array(1.0, np.float32), "one"), b.op("Shape", values))
    zeros = b.op("Expand", b.const(np.array(0.0, np.float32), "zero"), b.op("Shape", logits))
    gate = b.op("ScatterElements", zeros, indices, updates, axis=-1)
    spread = b.const(np.kron(np.eye(e, dtype=np.float32), np.ones((1, f), np.float32)), "spread")
    mask = b.op("MatMul", gate, spread)
    w1 = b.const(flat_experts(arrays["w1"], rows=False), "w1")
    h = b.op("Add", b.op("MatMul", x, w1), b.const(arrays["b1"].reshape(-1), "b1"))
    a = _activation(b, h, act)
    if "w_up" in arrays:
        a = b.op("Mul", a, b.op("MatMul", x, b.const(flat_experts(arrays["w_up"], rows=False), "w_up")))
    a = b.op("Mul", a, mask)
    w2 = b.const(flat_experts(arrays["w2"], rows=True), "w2")
    y = b.op("Add", b.op("MatMul", a, w2), node.inputs[6])
    replace_value(node.outputs[0], y, drop=node)


REFERENCE_RULES["MoE"] = _moe_to_dense
