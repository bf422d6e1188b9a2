"""`merge-experts`: fold each MoE layer's experts into fewer, keeping what similar experts
share instead of dropping whole experts (MC-SMoE / HC-SMoE style).

Per layer, on calibration rows:
1. Group: the experts' outputs on the same rows (every expert run densely) are clustered by
   average-linkage hierarchical clustering on cosine distance into round(keep x E) groups, so
   experts that compute alike end up together.
2. Align: an FFN expert is only defined up to a permutation of its hidden neurons, so before
   averaging, every member's neurons are matched to the group's dominant (most-routed) expert
   by the assignment that maximises the cosine of their weights (first/up columns and down
   rows together; Hungarian, scipy). Averaging unaligned experts blurs unrelated neurons.
3. Merge: the aligned weights are averaged with the members' routing shares as weights.
   The router keeps the dominant expert's column (its logit now routes to the merged one);
   the other members' columns are removed, so the router's softmax runs over the groups
   (`softmax` gating renormalises the selected ones; `softmax_all` keeps their entries).
Decisions per layer (groups, dominant, shares, fidelity of the block on those rows) go to the
manifest, as for `prune-experts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparsec.errors import OptionError
from sparsec.passes.moe.activations import ACTIVATIONS
from sparsec.passes.moe.experts import Experts
from sparsec.passes.moe.slim_experts import (
    lift_exported,
    moe_nodes,
    moe_rows,
    replace_experts,
    routing_stats,
)
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass

# Hungarian matching is O(F^3): wider experts are merged unaligned (said in the decision).
MAX_ALIGN_NEURONS = 4096
SIMILARITY_ROWS = 256  # rows whose expert outputs decide the groups


def expert_outputs(x: np.ndarray, ex: Experts, activation: str) -> np.ndarray:
    """[E, T, D]: every expert's output on rows x [T, D] (as if it were selected with weight 1)."""
    x = x.astype(np.float64)
    h = ACTIVATIONS[activation](np.einsum("td,edf->etf", x, ex.w1) + ex.b1[:, None, :])
    if ex.w_up is not None:
        h = h * np.einsum("td,edf->etf", x, ex.w_up)
    return np.einsum("etf,efd->etd", h, ex.w2)


def group_experts(outputs: np.ndarray, groups: int) -> list[list[int]]:
    """Expert indices per group (groups sorted by their smallest member)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    e = outputs.shape[0]
    if groups >= e:
        return [[i] for i in range(e)]
    flat = outputs.reshape(e, -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-30)
    labels = fcluster(linkage(flat, method="average", metric="cosine"), t=groups, criterion="maxclust")
    found = sorted((sorted(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)), key=lambda g: g[0])
    while len(found) < groups:  # maxclust may return fewer clusters (ties): split the largest
        big = max(range(len(found)), key=lambda i: len(found[i]))
        found[big:big + 1] = [found[big][:1], found[big][1:]]
        found.sort(key=lambda g: g[0])
    return found


def _neuron_features(ex: Experts, i: int) -> np.ndarray:
    """[F, *]: what each hidden neuron of expert i reads and writes, unit length."""
    parts = [ex.w1[i].T, ex.b1[i][:, None], ex.w2[i]]
    if ex.w_up is not None:
        parts.append(ex.w_up[i].T)
    f = np.concatenate(parts, axis=1).astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)


def align(ex: Experts, member: int, to: int) -> np.ndarray:
    """perm with member's neuron perm[j] matched to neuron j of expert `to`."""
    from scipy.optimize import linear_sum_assignment

    sim = _neuron_features(ex, to) @ _neuron_features(ex, member).T  # [F(to), F(member)]
    rows, cols = linear_sum_assignment(-sim)
    perm = np.empty(len(rows), np.int64)
    perm[rows] = cols
    return perm


def merge_group(ex: Experts, members: list[int], weights: np.ndarray, dominant: int, aligned: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(w1 [D, F], b1 [F], w2 [F, D], w_up) of the merged expert: members' neurons aligned to
    the dominant one, averaged with `weights` (one per member)."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    acc = [np.zeros_like(ex.w1[dominant], np.float64), np.zeros_like(ex.b1[dominant], np.float64),
           np.zeros_like(ex.w2[dominant], np.float64), None if ex.w_up is None else np.zeros_like(ex.w_up[dominant], np.float64)]
    for m, wm in zip(members, w, strict=True):
        p = align(ex, m, dominant) if aligned and m != dominant else np.arange(ex.w1.shape[2])
        acc[0] += wm * ex.w1[m][:, p]
        acc[1] += wm * ex.b1[m][p]
        acc[2] += wm * ex.w2[m][p]
        if acc[3] is not None:
            acc[3] += wm * ex.w_up[m][:, p]
    return acc[0], acc[1], acc[2], acc[3]


@register_pass
@dataclass(frozen=True)
class MergeExperts(Pass):
    name = "merge-experts"
    summary = "Merge each MoE layer's similar experts (grouped by their outputs, neurons aligned, usage-weighted)."
    exact = False

    keep: float = option(0.5, "fraction of each layer's experts left after merging (rounded, at least 1)")
    align: bool = option(True, "match members' hidden neurons to the dominant expert before averaging")
    include: tuple[str, ...] = option(("*",), "globs on MoE node names to merge")
    exclude: tuple[str, ...] = option((), "globs on MoE node names to leave whole")
    samples: int = option(8192, "most calibration rows per layer for statistics and fidelity (0 = all)")

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise OptionError(f"merge-experts: keep must be a fraction in (0, 1], got {self.keep}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        what = "merge-experts (expert usage and outputs)"
        lift_exported(model, ctx, self.name, what)
        nodes = moe_nodes(model, self.include, self.exclude)
        if not nodes:
            return PassResult(changed=False, stats={"layers": 0})
        rows, source = moe_rows(model, nodes, ctx, what, self.samples)
        changed = 0
        for m in nodes:
            x = rows[m.node.inputs[0].name]
            ex, e = m.experts, m.experts.count
            groups_wanted = max(1, round(self.keep * e))
            if groups_wanted >= e:
                ctx.record(self.name, m.node.name, decision="keep all", experts_before=e, experts_after=e)
                continue
            stats = routing_stats(m, x)
            share = np.asarray(stats["selected_share"]) + 1e-6  # an unused expert still counts a little
            groups = group_experts(expert_outputs(x[:SIMILARITY_ROWS], ex, m.activation), groups_wanted)
            aligned = self.align and ex.w1.shape[2] <= MAX_ALIGN_NEURONS
            merged, dominants = [], []
            for g in groups:
                dominant = max(g, key=lambda i: (share[i], -i))
                dominants.append(dominant)
                merged.append(merge_group(ex, g, share[g], dominant, aligned))
            new = Experts(w1=np.stack([w[0] for w in merged]).astype(np.float32),
                          b1=np.stack([w[1] for w in merged]).astype(np.float32),
                          w2=np.stack([w[2] for w in merged]).astype(np.float32), b2=ex.b2,
                          w_up=None if ex.w_up is None else np.stack([w[3] for w in merged]).astype(np.float32))
            router = (m.router_w[:, dominants], m.router_b[dominants])
            top_k_before, top_k = m.top_k, min(m.top_k, len(groups))
            fid = replace_experts(model, m, x, new, router, top_k)
            changed += 1
            note = {} if aligned or not self.align else {
                "alignment": f"skipped: {ex.w1.shape[2]} neurons per expert > {MAX_ALIGN_NEURONS}"}
            ctx.record(self.name, m.node.name, decision=f"merge {e} -> {len(groups)} experts", experts_before=e,
                       experts_after=len(groups), groups=groups, dominant=dominants, aligned=aligned,
                       top_k_before=top_k_before, top_k_after=top_k, statistics_inputs=source, rows=int(len(x)),
                       **stats, **fid, **note)
        if changed:
            RemoveUnusedNodesPass()(model)
        return PassResult(changed=bool(changed), stats={"layers": changed})
