"""ONNX Runtime's contrib op `com.microsoft.MoE` as a routed block `lift-moe` can take.

    MoE(input, router_probs, fc1_experts_weights, fc1_experts_bias, fc2_experts_weights,
        fc2_experts_bias, fc3_experts_weights, fc3_experts_bias)  attrs k, activation_type,
        normalize_routing_weights, use_sparse_mixer, ...

What ORT computes (contrib_ops/cpu/moe/moe_cpu.cc; checked on ORT's CPU run, tests): the
router_probs are logits, softmaxed over all E experts, the top k taken; with
normalize_routing_weights=1 the k weights are renormalised (our `softmax` gating), else kept
as they are (`softmax_all`). fc1 is [E, F, D] and fc2 [E, D, F] (Linear layout, our
transposes), fc1 bias [E, F]; the fc2 bias is per expert [E, D], added before the gate
weight, so it maps to our once-added b2 only when it is zero, or the same for every expert
under renormalised weights (they sum to 1). fc3 (a gated up projection) maps to w_up; swiglu
(gate and up fused in fc1, interleaved or in halves, or fc1 and fc3) maps to gated silu when
it is the plain form (activation_alpha 1, activation_beta 0, no swiglu_limit clamp).

The op has no router of its own: its router_probs must be a MatMul / Gemm of its input with a
constant (that becomes the lifted op's router). Whatever does not map is reported as a miss
with the reason; what maps is still checked numerically against ORT's run (match_block).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.passes.moe.experts import Experts
from sparsec.passes.moe.exported_moe import (
    BlockMiss,
    ExportedBlock,
    _as,
    _const,
    _router,
    _token_source,
)

MS_DOMAIN = "com.microsoft"
# ORT activation_type -> the com.sparsec.MoE activations it may be (the numeric check picks)
_ACTIVATIONS = {"relu": ("relu",), "gelu": ("gelu", "gelu_tanh"), "silu": ("silu",), "swiglu": ("silu",)}


def _attr(node: ir.Node, name: str, default: int | float | str) -> int | float | str:
    a = node.attributes.get(name)
    if a is None:
        return default
    if isinstance(default, str):
        return a.as_string()
    return a.as_float() if isinstance(default, float) else a.as_int()


def _swiglu_parts(node: ir.Node, fc1: np.ndarray, b1: np.ndarray | None, fc3: np.ndarray | None,
                  f: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | str:
    """(gate [E, F, D], its bias, up [E, F, D]) of a swiglu op, when it is plain silu(gate) * up."""
    if float(_attr(node, "activation_alpha", 1.0)) != 1.0 or float(_attr(node, "activation_beta", 0.0)) != 0.0 \
            or node.attributes.get("swiglu_limit") is not None:
        return "swiglu with activation_alpha != 1, activation_beta != 0 or a swiglu_limit clamp is not silu(gate) * up"
    fusion = int(_attr(node, "swiglu_fusion", 0))
    if fusion == 0:
        if fc3 is None:
            return "swiglu_fusion=0 without fc3_experts_weights"
        return fc1, b1, fc3
    if fusion not in (1, 2) or fc3 is not None or fc1.shape[1] != 2 * f:
        return f"swiglu_fusion={fusion} with fc1 of shape {list(fc1.shape)} (expected fused [E, 2F={2 * f}, D], no fc3)"
    gate, up = (slice(0, None, 2), slice(1, None, 2)) if fusion == 1 else (slice(0, f), slice(f, None))  # interleaved | halves
    if b1 is not None and np.any(b1[:, up]):
        return "the up half of fc1_experts_bias is non-zero (com.sparsec.MoE has no up-projection bias)"
    return fc1[:, gate], None if b1 is None else b1[:, gate], fc1[:, up]


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _ms_block(node: ir.Node, name: str) -> ExportedBlock | str:
    if _attr(node, "use_sparse_mixer", 0):
        return "use_sparse_mixer=1 (SparseMixer routing) has no com.sparsec.MoE gating"
    act = str(_attr(node, "activation_type", "relu"))
    if act not in _ACTIVATIONS:
        return f"activation_type '{act}' has no com.sparsec.MoE activation (relu, gelu, silu, plain swiglu map)"
    x, probs = node.inputs[0], _input(node, 1)
    producer = probs.producer() if probs is not None else None
    router = _router(producer) if producer is not None else None
    if producer is None or router is None:
        return "router_probs is not a MatMul / Gemm of the op's input with a constant (no router to lift)"
    w, b = router
    d, e = w.shape
    if _token_source(producer.inputs[0], d) is not _token_source(x, d):
        return "router_probs is computed from another value than the op's input"
    fc1, fc2, fc3 = (_const(_input(node, i)) for i in (2, 4, 6))
    b1, b2, b3 = (_const(_input(node, i)) for i in (3, 5, 7))
    for label, v, arr in (("fc1_experts_weights", 2, fc1), ("fc2_experts_weights", 4, fc2), ("fc3_experts_weights", 6, fc3),
                          ("fc1_experts_bias", 3, b1), ("fc2_experts_bias", 5, b2), ("fc3_experts_bias", 7, b3)):
        if _input(node, v) is not None and arr is None:
            return f"{label} is not a constant"
    weights = [a for a in (fc1, fc2, fc3) if a is not None]
    if fc1 is None or fc2 is None or any(a.ndim != 3 or a.shape[0] != e or a.dtype != np.float32 for a in weights):
        return f"expert weights are not fp32 [E={e}, ., .] stacks"
    f = int(fc2.shape[2]) if fc2.shape[1] == d else int(fc2.shape[1])
    if b3 is not None and np.any(b3):
        return "fc3_experts_bias is non-zero (com.sparsec.MoE has no up-projection bias)"
    normalize = bool(_attr(node, "normalize_routing_weights", 0))
    if b2 is None or not np.any(b2):
        bias2 = np.zeros(d, np.float32)
    elif normalize and b2.shape == (e, d) and np.all(b2 == b2[:1]):
        bias2 = np.ascontiguousarray(b2[0], dtype=np.float32)  # the k weights sum to 1: added once
    else:
        return "fc2_experts_bias differs per expert (scaled by each gate weight; com.sparsec.MoE adds one b2)"
    if act == "swiglu":
        parts = _swiglu_parts(node, fc1, b1, fc3, f)
        if isinstance(parts, str):
            return parts
        fc1, b1, fc3 = parts
    if b1 is not None and b1.shape != (e, f):
        return f"fc1_experts_bias has shape {list(b1.shape)}, expected [{e}, {f}]"
    k = int(_attr(node, "k", 1))
    if not 1 <= k <= e:
        return f"k={k} is not in [1, E={e}]"
    bias1 = np.zeros((e, f), np.float32) if b1 is None else np.ascontiguousarray(b1, dtype=np.float32)
    # ORT's layout (transposed) first; as-is too where D == F leaves it ambiguous.
    readings = [(f"ORT fc1 {'[E,F,D]' if w1 is not fc1 else '[E,D,F]'}",
                 Experts(np.ascontiguousarray(w1), bias1, np.ascontiguousarray(w2), bias2,
                         None if w_up is None else np.ascontiguousarray(w_up)))
                for w1 in reversed(_as(fc1, d, f)) for w2 in reversed(_as(fc2, f, d))
                for w_up in (reversed(_as(fc3, d, f)) if fc3 is not None else [None])]
    if not readings:
        return f"expert weight shapes {[list(a.shape) for a in weights]} do not fit D={d}"
    return ExportedBlock(name, x, [node.outputs[0]], np.ascontiguousarray(w), b, k, readings=readings,
                         activations=_ACTIVATIONS[act], gatings=("softmax",) if normalize else ("softmax_all",))


def find_ms_moe(model: ir.Model) -> tuple[list[ExportedBlock], list[BlockMiss]]:
    """Every `com.microsoft.MoE` node: as a block to match, or a miss with the reason."""
    blocks: list[ExportedBlock] = []
    misses: list[BlockMiss] = []
    for node in model.graph:
        if node.domain != MS_DOMAIN or node.op_type != "MoE":
            continue
        name = node.name or node.outputs[0].name
        got = _ms_block(node, name)
        if isinstance(got, str):
            misses.append(BlockMiss(name, f"com.microsoft.MoE: {got}"))
        else:
            blocks.append(got)
    return blocks, misses
