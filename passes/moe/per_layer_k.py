"""Per-layer top_k for `moefy-ffn{active=...}`: the shared allocator spends a budget of active
FFN neurons where calibration data says it matters.

`scan=output` (default): every FFN is MoE-fied with all experts (exact); then each FFN alone
runs at top_k on a grid of values and the damage is 1 - mean cosine of the model's outputs
against the dense model on calibration samples (errors compound through later layers, which
layer-local measures miss). `scan=layer`, below, measures each FFN on its own rows.

Each FFN is an item whose options are top_k = E, E-1, ..., 1 (the first: all experts, no
change); an option's damage is the squared error it adds to the residual stream, relative to
that stream (||FFN_k(x) - FFN(x)||^2 / ||r + FFN(x)||^2 summed over the layer's calibration
rows, r what the FFN's output is added to; the FFN's own output where no residual was
found): an FFN whose output is small next to the stream it joins can lose more experts. Its
benefit is the neurons it leaves inactive per token ((E - k) * F / E). `meet_benefit` finds the least total damage that leaves at least
(1 - active) of all FFN neurons inactive, so sensitive layers keep more experts.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.allocator import LayerOptions, meet_benefit, totals
from sparsec.passes.moe.experts import Experts, gates, hidden_activations

_ROWS = 2048  # calibration rows per layer for the K scan


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    num = np.sum(ref * got, axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def k_curve(x: np.ndarray, ex: Experts, router: tuple[np.ndarray, np.ndarray], activation: str, gating: str,
            stream: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For top_k = 1..E (index k-1): mean cosine vs the dense FFN, and the squared error
    relative to the residual stream (stream + dense output; the dense output alone if None)."""
    x = x[:_ROWS]
    e, _, f = ex.w1.shape
    h = hidden_activations(x, ex, activation).astype(np.float32)  # [T, E*F]
    # Each expert's contribution once: [E, T, D]; any top_k is then a gated sum of them.
    per_expert = np.stack([h[:, i * f:(i + 1) * f] @ ex.w2[i] for i in range(e)])
    dense = per_expert.sum(axis=0) + ex.b2
    logits = x.astype(np.float64) @ router[0] + router[1]
    joined = dense if stream is None else dense + stream[:_ROWS]
    scale = max(float(np.sum(joined.astype(np.float64) ** 2)), 1e-30)
    cos, err = np.empty(e), np.empty(e)
    for k in range(1, e + 1):
        g = gates(logits, k, gating).astype(np.float32)  # [T, E]
        got = np.einsum("te,etd->td", g, per_expert) + ex.b2
        cos[k - 1] = _cosine(dense, got)
        err[k - 1] = float(np.sum((got - dense).astype(np.float64) ** 2)) / scale
    return cos, err


def choose_top_k(layers: list[tuple[str, np.ndarray, Experts, tuple[np.ndarray, np.ndarray], str, np.ndarray | None]],
                 experts: int, active: float, gating: str) -> tuple[list[int], dict]:
    """top_k per layer (name, rows, experts, router, activation, residual-stream rows or None)
    so that `active` of all FFN neurons run per token, and what the allocator predicted."""
    options, curves, total = [], {}, 0.0
    for name, x, ex, router, act, stream in layers:
        cos, err = k_curve(x, ex, router, act, gating, stream)
        curves[name] = [round(float(c), 6) for c in cos]
        f_total = ex.w1.shape[0] * ex.w1.shape[2]
        total += f_total
        ks = list(range(experts, 0, -1))
        options.append(LayerOptions(name, [f"top_k={k}" for k in ks], np.array([err[k - 1] for k in ks]),
                                    np.array([(experts - k) * f_total / experts for k in ks], dtype=np.float64)))
    picks = meet_benefit(options, (1.0 - active) * total) if experts > 1 else [0] * len(options)
    top_ks = [experts - i for i in picks]
    t = totals(options, picks)
    info = {"allocation": {"active_target": active, "active_reached": round(1.0 - t["benefit"] / total, 6) if total else 1.0,
                           "predicted_damage": round(t["predicted_damage"], 6), "scan": "layer", "layer_cosine_by_k": curves}}
    return top_ks, info


def _grid(experts: int, points: int = 8) -> list[int]:
    """top_k values scanned (all of them for small E), largest first."""
    if experts <= points + 1:
        return list(range(experts, 0, -1))
    return sorted({experts, *np.unique(np.round(np.linspace(1, experts - 1, points)).astype(int)).tolist()}, reverse=True)


def choose_top_k_by_output(model: ir.Model, nodes: list[ir.Node], experts: int, active: float, calib,  # noqa: ANN001
                           min_fidelity: float = 0.0, refine: int = 0) -> tuple[list[int], dict]:
    """top_k per MoE node (inserted with top_k = E) from the output damage of each alone.

    `min_fidelity` > 0 (floor mode, `active` unused): the fewest active neurons whose
    allocation keeps the model's measured mean output cosine on `calib` >= the floor, found by
    bisection on the active budget (each round applies the allocation and measures it).
    `refine` > 0: then up to that many rounds of `refine_by_moves` on the whole model's output."""
    from sparsec.calib.metrics import mean_cosine
    from sparsec.calib.runner import CalibrationRunner

    def outputs() -> list[np.ndarray]:
        return CalibrationRunner(model, calib).outputs()

    reference = outputs()
    rows = CalibrationRunner(model, calib).output_rows()
    ks = _grid(experts)
    options, curves, total = [], {}, 0.0
    for node in nodes:
        damage = []
        for k in ks:
            if k == experts:
                damage.append(0.0)
                continue
            node.attributes["top_k"] = ir.AttrInt64("top_k", k)
            damage.append(1.0 - float(mean_cosine(reference, outputs(), rows)))
        node.attributes["top_k"] = ir.AttrInt64("top_k", experts)
        f_total = node.inputs[3].const_value.shape[0] * node.inputs[3].const_value.shape[2]
        total += f_total
        curves[node.name] = {str(k): round(1.0 - d, 6) for k, d in zip(ks, damage, strict=True)}
        options.append(LayerOptions(node.name, [f"top_k={k}" for k in ks], np.array(damage),
                                    np.array([(experts - k) * f_total / experts for k in ks], dtype=np.float64)))
    def allocate(fraction: float) -> list[int]:
        return meet_benefit(options, (1.0 - fraction) * total) if experts > 1 else [0] * len(options)

    rounds: list[dict] = []
    if min_fidelity > 0.0:
        active = _floor_active(nodes, ks, allocate, lambda: float(mean_cosine(reference, outputs(), rows)),
                               min_fidelity, 1.0 / experts, rounds)
    picks = allocate(active)
    top_ks = [ks[i] for i in picks]
    t = totals(options, picks)
    info = {"allocation": {"active_target": active, "active_reached": round(1.0 - t["benefit"] / total, 6) if total else 1.0,
                           "predicted_damage": round(t["predicted_damage"], 6), "scan": "output",
                           "output_cosine_by_k": curves, "scan_samples": calib.num_samples,
                           **({"min_fidelity": min_fidelity, "floor_rounds": rounds} if min_fidelity > 0.0 else {})}}
    if refine > 0 and len(nodes) > 1:
        sizes = [node.inputs[3].const_value.shape[0] * node.inputs[3].const_value.shape[2] for node in nodes]
        top_ks, moves = refine_by_moves(nodes, top_ks, sizes, experts, lambda: float(mean_cosine(reference, outputs(), rows)),
                                        refine)
        reached = sum(k * f for k, f in zip(top_ks, sizes, strict=True)) / (experts * total)
        info["allocation"] |= {"refine_rounds": moves, "active_reached": round(reached, 6)}
    return top_ks, info


def refine_by_moves(nodes: list[ir.Node], top_ks: list[int], sizes: list[int], experts: int, measure,  # noqa: ANN001
                    rounds: int) -> tuple[list[int], list[dict]]:
    """Measured local search on the allocation: each round tries every move of one expert per
    token from one FFN to another (never more active neurons: the receiving FFN is no wider)
    and keeps the move that raises the whole model's measured output cosine most.

    Why: the allocator adds damages each measured with one FFN alone, but the errors of
    several MoE-fied FFNs interact (later layers see earlier layers' errors); the moves score
    the allocation as it will run. Returns the top_ks (applied to `nodes`) and each round's
    record. Moves only raise the measured cosine, so a fidelity floor met before stays met."""
    def apply(ks: list[int]) -> None:
        for node, k in zip(nodes, ks, strict=True):
            node.attributes["top_k"] = ir.AttrInt64("top_k", k)

    apply(top_ks)
    best = measure()
    history: list[dict] = [{"top_k": list(top_ks), "cosine": round(best, 6)}]
    for _ in range(rounds):
        winner: list[int] | None = None
        for a in range(len(nodes)):
            for b in range(len(nodes)):
                if a == b or top_ks[a] <= 1 or top_ks[b] >= experts or sizes[b] > sizes[a]:
                    continue
                trial = list(top_ks)
                trial[a] -= 1
                trial[b] += 1
                apply(trial)
                got = measure()
                if got > best + 1e-6:
                    best, winner = got, trial
        if winner is None:
            break
        top_ks = winner
        history.append({"top_k": list(top_ks), "cosine": round(best, 6)})
    apply(top_ks)
    return top_ks, history


def _floor_active(nodes: list[ir.Node], ks: list[int], allocate, measure, floor: float, lowest: float,  # noqa: ANN001
                  rounds: list[dict], steps: int = 6) -> float:
    """The smallest active fraction (bisection over [lowest, 1]) whose allocation measures a
    cosine >= floor; 1.0 (every expert) when none of the tried ones does. Leaves top_k = E."""
    lo, hi = lowest, 1.0  # hi always meets the floor: every expert runs (the dense FFN)
    for fraction in [lowest] + [None] * (steps - 1):
        mid = fraction if fraction is not None else (lo + hi) / 2
        for node, pick in zip(nodes, allocate(mid), strict=True):
            node.attributes["top_k"] = ir.AttrInt64("top_k", ks[pick])
        cos = measure()
        rounds.append({"active": round(mid, 6), "cosine": round(cos, 6)})
        if cos >= floor:
            hi = mid
            if fraction is not None:  # even the fewest experts meet it
                break
        else:
            lo = mid
    for node in nodes:
        node.attributes["top_k"] = ir.AttrInt64("top_k", ks[0])
    return hi
