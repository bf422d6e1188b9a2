"""Expert weights of a MoE-fied FFN, stacked as `com.sparsec.MoE` takes them, and a numpy
forward pass of the op (fidelity per layer, tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.dialect.moe import flat_experts
from sparsec.passes.moe.activations import ACTIVATIONS
from sparsec.passes.moe.ffn_finder import FFN


@dataclass
class Experts:
    w1: np.ndarray  # [E, D, F] (the activation's branch)
    b1: np.ndarray  # [E, F]
    w2: np.ndarray  # [E, F, D]
    b2: np.ndarray  # [D]
    w_up: np.ndarray | None  # [E, D, F] gated FFNs: the branch multiplied in

    @property
    def count(self) -> int:
        return int(self.w1.shape[0])


def split_experts(ffn: FFN, perm: np.ndarray, experts: int) -> Experts:
    """Reorder the FFN's neurons by `perm` (expert-major) and stack them per expert."""
    d, f = ffn.dim, ffn.hidden
    size = f // experts
    first = ffn.first

    def stack_in(w: np.ndarray) -> np.ndarray:  # [D, F] -> [E, D, F/E]
        return np.ascontiguousarray(w[:, perm].reshape(d, experts, size).transpose(1, 0, 2), dtype=np.float32)

    b1 = first.bias if first.bias is not None else np.zeros(f, np.float32)
    b2 = ffn.down.bias if ffn.down.bias is not None else np.zeros(ffn.down.weight.shape[1], np.float32)
    return Experts(
        w1=stack_in(first.weight),
        b1=np.ascontiguousarray(b1[perm].reshape(experts, size), dtype=np.float32),
        w2=np.ascontiguousarray(ffn.down.weight[perm].reshape(experts, size, -1), dtype=np.float32),
        b2=np.ascontiguousarray(b2, dtype=np.float32),
        w_up=stack_in(ffn.up.weight) if ffn.gate is not None else None,
    )


def hidden_activations(x: np.ndarray, ex: Experts, activation: str) -> np.ndarray:
    """The FFN's intermediate activations [T, E*F] (expert-major) for input rows x [T, D]."""
    x = x.astype(np.float64)
    h = ACTIVATIONS[activation](x @ flat_experts(ex.w1, rows=False) + ex.b1.reshape(-1))
    if ex.w_up is not None:
        h = h * (x @ flat_experts(ex.w_up, rows=False))
    return h


def gates(logits: np.ndarray, top_k: int, gating: str) -> np.ndarray:
    """[T, E] weights of the selected experts (0 elsewhere)."""
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    g = np.zeros_like(logits, dtype=np.float64)
    if gating == "softmax":
        sel = np.take_along_axis(logits, idx, axis=1).astype(np.float64)
        w = np.exp(sel - sel.max(axis=1, keepdims=True))
        np.put_along_axis(g, idx, w / w.sum(axis=1, keepdims=True), axis=1)
    elif gating == "softmax_all":  # softmax over every expert, the top-k entries kept as they are
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        np.put_along_axis(g, idx, np.take_along_axis(p, idx, axis=1), axis=1)
    else:
        np.put_along_axis(g, idx, 1.0, axis=1)
    return g


def moe_forward(x: np.ndarray, ex: Experts, router_w: np.ndarray, router_b: np.ndarray, top_k: int,
                activation: str, gating: str = "none") -> np.ndarray:
    """`com.sparsec.MoE` on rows x [T, D], in float64."""
    h = hidden_activations(x, ex, activation)
    g = gates(x.astype(np.float64) @ router_w + router_b, top_k, gating)
    h = h * np.repeat(g, ex.w1.shape[2], axis=1)
    return h @ flat_experts(ex.w2, rows=True) + ex.b2


def dense_forward(x: np.ndarray, ex: Experts, activation: str) -> np.ndarray:
    return hidden_activations(x, ex, activation) @ flat_experts(ex.w2, rows=True) + ex.b2
