"""Per-layer top_k for `moefy-ffn{active=...}`: the shared allocator spends a budget of active
FFN neurons where calibration data says it matters.

Each FFN is an item whose options are top_k = E, E-1, ..., 1 (the first: all experts, no
change); an option's damage is 1 - mean cosine of the FFN's output against the dense FFN on
the layer's calibration rows, its benefit the neurons it leaves inactive per token
((E - k) * F / E). `meet_benefit` finds the least total damage that leaves at least
(1 - active) of all FFN neurons inactive, so sensitive layers keep more experts.
"""

from __future__ import annotations

import numpy as np

from sparsec.allocator import LayerOptions, meet_benefit, totals
from sparsec.passes.moe.experts import Experts, gates, hidden_activations

_ROWS = 2048  # calibration rows per layer for the K scan


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    num = np.sum(ref * got, axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def k_curve(x: np.ndarray, ex: Experts, router: tuple[np.ndarray, np.ndarray], activation: str, gating: str) -> np.ndarray:
    """Mean cosine vs the dense FFN for top_k = 1..E (index k-1), from one pass over the experts."""
    x = x[:_ROWS]
    e, _, f = ex.w1.shape
    h = hidden_activations(x, ex, activation).astype(np.float32)  # [T, E*F]
    # Each expert's contribution once: [E, T, D]; any top_k is then a gated sum of them.
    per_expert = np.stack([h[:, i * f:(i + 1) * f] @ ex.w2[i] for i in range(e)])
    dense = per_expert.sum(axis=0) + ex.b2
    logits = x.astype(np.float64) @ router[0] + router[1]
    out = np.empty(e)
    for k in range(1, e + 1):
        g = gates(logits, k, gating).astype(np.float32)  # [T, E]
        out[k - 1] = _cosine(dense, np.einsum("te,etd->td", g, per_expert) + ex.b2)
    return out


def choose_top_k(layers: list[tuple[str, np.ndarray, Experts, tuple[np.ndarray, np.ndarray], str]], experts: int,
                 active: float, gating: str) -> tuple[list[int], dict]:
    """top_k per layer (name, rows, experts, router, activation) so that `active` of all
    FFN neurons run per token, and what the allocator predicted."""
    options, curves, total = [], {}, 0.0
    for name, x, ex, router, act in layers:
        cos = k_curve(x, ex, router, act, gating)
        curves[name] = [round(float(c), 6) for c in cos]
        f_total = ex.w1.shape[0] * ex.w1.shape[2]
        total += f_total
        ks = list(range(experts, 0, -1))
        options.append(LayerOptions(name, [f"top_k={k}" for k in ks], np.array([1.0 - cos[k - 1] for k in ks]),
                                    np.array([(experts - k) * f_total / experts for k in ks], dtype=np.float64)))
    picks = meet_benefit(options, (1.0 - active) * total) if experts > 1 else [0] * len(options)
    top_ks = [experts - i for i in picks]
    t = totals(options, picks)
    info = {"allocation": {"active_target": active, "active_reached": round(1.0 - t["benefit"] / total, 6) if total else 1.0,
                           "predicted_damage": round(t["predicted_damage"], 6), "layer_cosine_by_k": curves}}
    return top_ks, info
