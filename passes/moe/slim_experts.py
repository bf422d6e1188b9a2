"""Slim routed models: lift exported MoE blocks (`lift-moe`), drop the least-used experts
(`prune-experts`), run fewer experts per token (`moe-top-k`).

All three act on `com.sparsec.MoE` nodes: blocks an exporter emitted (Mixtral / Qwen-MoE
style, found and matched by `exported_moe.py`; ONNX Runtime's `com.microsoft.MoE`, by
`ms_moe.py`) are lifted first, and MoE-fied FFNs (`moefy-ffn`) are
already in that form. Routing statistics (how often each expert is among a token's top-k,
and its mean gate weight) come from the blocks' inputs on the calibration data, or on random
sample inputs where a pass does not need real data (then the manifest says so). Pruning
removes the dropped experts' router columns, as the model would be without those experts:
under `softmax` gating the selected weights renormalise over the kept experts as before;
under `softmax_all` (Qwen-MoE) the softmax now runs over the kept experts' logits and the
top-k entries of it are still not renormalised (tokens keep less than full weight); top-k reduction changes only how many run (SMoE-Dropout:
the same router at a smaller k). Per layer, the decision and the fidelity of the block's
output against the unmodified block on those rows land in the manifest.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from sparsec.dialect import DOMAIN
from sparsec.errors import OptionError
from sparsec.passes.moe.experts import Experts, gates, moe_forward
from sparsec.passes.moe.exported_moe import Lifted, find_exported_moe, lift, match_block
from sparsec.passes.moe.moefy_ffn import _row_fidelity
from sparsec.passes.moe.ms_moe import find_ms_moe
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass

_RANDOM_SAMPLES = 4  # random sample inputs when there is no calibration data


def _data(model: ir.Model, ctx: PassContext, need_real: str | None):  # noqa: ANN202  (CalibrationData, source)
    """Calibration data, or random sample inputs when `need_real` is None (else an error)."""
    from sparsec.calib.data import CalibrationData

    if ctx.calibration is not None:
        from sparsec.calib.stats import require_calibration

        return require_calibration(ctx, need_real or "moe"), "calibration"
    if need_real is not None:
        from sparsec.calib.stats import require_calibration

        require_calibration(ctx, need_real)  # raises the one-line error
    from sparsec.numerics import sample_inputs

    feeds = [sample_inputs(model, seed=ctx.seed + i) for i in range(_RANDOM_SAMPLES)]
    return CalibrationData.from_feeds(feeds, source="<random sample inputs>"), "random sample inputs"


def _capture(model: ir.Model, calib, names: list[str], real_rows: bool) -> dict[str, list[np.ndarray]]:  # noqa: ANN001
    from sparsec.calib.runner import CalibrationRunner

    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for values in CalibrationRunner(model, calib).values(sorted(set(names)), real_rows=real_rows):
        for n in names:
            out[n].append(values[n])
    return out


def lift_exported(model: ir.Model, ctx: PassContext, pass_name: str, need_real: str | None) -> list[Lifted]:
    """Lift every exported MoE block that matches into `com.sparsec.MoE`; record hits and misses."""
    blocks, misses = find_exported_moe(model)
    ms_blocks, ms_misses = find_ms_moe(model)
    blocks, misses = blocks + ms_blocks, misses + ms_misses
    for miss in misses:
        ctx.record(pass_name, miss.layer, decision="skip", reason=f"not a MoE block the matcher takes: {miss.reason}")
    if not blocks:
        return []
    calib, source = _data(model, ctx, need_real)
    names = [v.name for b in blocks for v in (b.x, *b.outputs)]
    try:  # one batch is enough to tell the readings apart
        values = _capture(model, calib.head(calib.batch_size), names, real_rows=False)
    except Exception as e:  # noqa: BLE001  (an export that fails on the data: report, do not crash)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        for block in blocks:
            ctx.record(pass_name, block.name, decision="skip", reason=f"the exported graph fails on the first batch: {first[:200]}")
        return []
    lifted: list[Lifted] = []
    for block in blocks:
        got = match_block(block, values[block.x.name][0], [values[v.name][0] for v in block.outputs])
        if isinstance(got, str):
            ctx.record(pass_name, block.name, decision="skip", reason=got)
            continue
        lifted.append(got)
    for item in lifted:
        node = lift(model, item)
        ctx.record(pass_name, item.block.name, decision="lift", moe_node=node.name, experts=int(item.experts.count),
                   top_k=item.block.top_k, activation=item.activation, gating=item.gating, layout=item.layout,
                   match_rel_l2=float(f"{item.rel_l2:.3g}"), match_inputs=source,
                   **({"kept_as_graph": f"{item.left_outside} later block output(s) (e.g. a shared expert) stay as "
                                        "graph nodes around the lifted routed experts"} if item.left_outside else {}))
    if lifted:
        model.opset_imports.setdefault(DOMAIN, 1)
        RemoveUnusedNodesPass()(model)
    return lifted


@dataclass
class MoENode:
    node: ir.Node
    experts: Experts
    router_w: np.ndarray
    router_b: np.ndarray

    @property
    def top_k(self) -> int:
        return self.node.attributes["top_k"].as_int()

    @property
    def activation(self) -> str:
        return self.node.attributes["activation"].as_string()

    @property
    def gating(self) -> str:
        return self.node.attributes["gating"].as_string()

    def forward(self, x: np.ndarray, experts: Experts | None = None, router: tuple[np.ndarray, np.ndarray] | None = None,
                top_k: int | None = None) -> np.ndarray:
        rw, rb = router or (self.router_w, self.router_b)
        return moe_forward(x, experts or self.experts, rw, rb, top_k or self.top_k, self.activation, self.gating)


def moe_nodes(model: ir.Model, include: tuple[str, ...], exclude: tuple[str, ...]) -> list[MoENode]:
    out = []
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type != "MoE":
            continue
        if not any(fnmatch.fnmatchcase(node.name, p) for p in include) or any(fnmatch.fnmatchcase(node.name, p) for p in exclude):
            continue
        a = [None if i == 0 or v is None else v.const_value.numpy() for i, v in enumerate(node.inputs)]
        out.append(MoENode(node, Experts(w1=a[3], b1=a[4], w2=a[5], b2=a[6], w_up=a[7] if len(a) > 7 else None), a[1], a[2]))
    return out


def moe_rows(model: ir.Model, nodes: list[MoENode], ctx: PassContext, need_real: str | None, samples: int) -> tuple[dict[str, np.ndarray], str]:
    """Each MoE node's input rows [T, D] (real tokens), at most `samples` of them."""
    calib, source = _data(model, ctx, need_real)
    names = [m.node.inputs[0].name for m in nodes]
    values = _capture(model, calib, names, real_rows=True)
    rng = np.random.default_rng(ctx.seed)
    rows = {}
    for n in set(names):
        r = np.concatenate([v.reshape(-1, v.shape[-1]) for v in values[n]], axis=0).astype(np.float32)
        rows[n] = r if samples <= 0 or len(r) <= samples else r[np.sort(rng.choice(len(r), samples, replace=False))]
    return rows, source


def routing_stats(m: MoENode, x: np.ndarray) -> dict[str, list[float]]:
    """Per expert: share of tokens that select it, and its mean gate weight per token."""
    g = gates(x.astype(np.float64) @ m.router_w + m.router_b, m.top_k, m.gating)
    return {"selected_share": [round(float(s), 6) for s in (g > 0).mean(axis=0)],
            "mean_gate": [round(float(s), 6) for s in g.mean(axis=0)]}


def _set_input(model: ir.Model, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Point input `index` of `node` at a new initializer holding `array` (the old one may be shared)."""
    old = node.inputs[index]
    name = f"{old.name}.slim"
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array, dtype=np.float32), name=name))
    model.graph.register_initializer(value)
    node.replace_input_with(index, value)


def replace_experts(model: ir.Model, m: MoENode, x: np.ndarray, new: Experts,
                    router: tuple[np.ndarray, np.ndarray], top_k: int) -> dict[str, float]:
    """Give node `m` new experts, router and top_k; the block's fidelity on rows x (before the change)."""
    fid = _row_fidelity(m.forward(x), m.forward(x, new, router, top_k))
    for index, array in ((1, router[0]), (2, router[1]), (3, new.w1), (4, new.b1), (5, new.w2)):
        _set_input(model, m.node, index, array)
    if new.w_up is not None:
        _set_input(model, m.node, 7, new.w_up)
    m.node.attributes["top_k"] = ir.AttrInt64("top_k", top_k)
    return fid


@register_pass
@dataclass(frozen=True)
class LiftMoE(Pass):
    name = "lift-moe"
    summary = ("Find exported MoE blocks (Mixtral / Qwen-MoE router + TopK + stacked experts, com.microsoft.MoE) "
               "and lift them to com.sparsec.MoE.")
    exact = False  # matched to 1e-4 relative L2, not bit-exact

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        lifted = lift_exported(model, ctx, self.name, None)
        return PassResult(changed=bool(lifted), stats={"blocks_lifted": len(lifted)})


@register_pass
@dataclass(frozen=True)
class PruneExperts(Pass):
    name = "prune-experts"
    summary = "Drop each MoE layer's least-routed experts (calibration statistics); the router's softmax runs over the rest."
    exact = False

    keep: float = option(0.5, "fraction of each layer's experts to keep (rounded, at least 1)")
    include: tuple[str, ...] = option(("*",), "globs on MoE node names to prune")
    exclude: tuple[str, ...] = option((), "globs on MoE node names to leave whole")
    samples: int = option(8192, "most calibration rows per layer for statistics and fidelity (0 = all)")

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise OptionError(f"prune-experts: keep must be a fraction in (0, 1], got {self.keep}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        what = "prune-experts (expert usage statistics)"
        lift_exported(model, ctx, self.name, what)
        nodes = moe_nodes(model, self.include, self.exclude)
        if not nodes:
            return PassResult(changed=False, stats={"layers": 0})
        rows, source = moe_rows(model, nodes, ctx, what, self.samples)
        kept_total = 0
        for m in nodes:
            x = rows[m.node.inputs[0].name]
            e = m.experts.count
            stats = routing_stats(m, x)
            keep = max(1, round(self.keep * e))
            # Most selected first; gate weight breaks ties.
            rank = sorted(range(e), key=lambda i: (-stats["selected_share"][i], -stats["mean_gate"][i], i))
            kept = np.array(sorted(rank[:keep]))
            ex = m.experts
            new = Experts(w1=ex.w1[kept], b1=ex.b1[kept], w2=ex.w2[kept], b2=ex.b2,
                          w_up=None if ex.w_up is None else ex.w_up[kept])
            router = (m.router_w[:, kept], m.router_b[kept])
            top_k_before, top_k = m.top_k, min(m.top_k, keep)
            fid = replace_experts(model, m, x, new, router, top_k)
            kept_total += keep
            ctx.record(self.name, m.node.name, decision=f"keep {keep}/{e} experts", experts_before=e, experts_after=keep,
                       kept=[int(i) for i in kept], dropped=[i for i in range(e) if i not in set(kept.tolist())],
                       top_k_before=top_k_before, top_k_after=top_k, statistics_inputs=source, rows=int(len(x)), **stats,
                       **fid)
        RemoveUnusedNodesPass()(model)
        return PassResult(changed=True, stats={"layers": len(nodes), "experts_kept": kept_total})


@register_pass
@dataclass(frozen=True)
class MoETopK(Pass):
    name = "moe-top-k"
    summary = "Run k experts per token instead of the router's top_k (same router, SMoE-Dropout style)."
    exact = False

    k: int = option(1, "experts each token runs (layers with top_k <= k are left as they are)")
    include: tuple[str, ...] = option(("*",), "globs on MoE node names to change")
    exclude: tuple[str, ...] = option((), "globs on MoE node names to leave as they are")
    samples: int = option(8192, "most calibration rows per layer for statistics and fidelity (0 = all)")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise OptionError(f"moe-top-k: k must be a positive number of experts, got {self.k}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        lift_exported(model, ctx, self.name, None)
        nodes = [m for m in moe_nodes(model, self.include, self.exclude) if m.top_k > self.k]
        if not nodes:
            return PassResult(changed=False, stats={"layers": 0})
        rows, source = moe_rows(model, nodes, ctx, None, self.samples)
        for m in nodes:
            x = rows[m.node.inputs[0].name]
            fid = _row_fidelity(m.forward(x), m.forward(x, top_k=self.k))
            before = m.top_k
            stats = routing_stats(m, x)
            m.node.attributes["top_k"] = ir.AttrInt64("top_k", self.k)
            ctx.record(self.name, m.node.name, decision=f"top_k {before} -> {self.k}", top_k_before=before,
                       top_k_after=self.k, experts=m.experts.count, fidelity_inputs=source, rows=int(len(x)), **stats, **fid)
        return PassResult(changed=True, stats={"layers": len(nodes)})
