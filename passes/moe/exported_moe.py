"""Find the MoE blocks exporters emit (Hugging Face Mixtral-style: batched or looped experts)
and lift each into one `com.sparsec.MoE` node.

Exporters spell a routed block very differently (the TorchScript exporter's eager loop with
NonZero/ScatterElements, its batched-matmul form with Tile, the dynamo exporter's GatherND),
so the block is found by structure that all share and matched by numerics:

- the router: a MatMul / Gemm of the block input X with a constant [D, E] (or [E, D]) weight
  whose logits reach a TopK (the experts each token runs; K is that TopK's constant);
- the block output: one of the TopK's first post-dominators (values every path from it to
  the graph outputs goes through) computed from X and constants only; data picks the last
  of them that holds one row per token of X (the first may still be per token and expert);
- the experts: 3-D constants with E leading between X and that output ([E, 2F, D] gate and up
  stacked, [E, D, F] down in transformers' layout; transposed or split layouts are tried too).

Each reading of the expert weights (gate/up order, activation, gating: `softmax` over the
selected experts' logits as Mixtral renormalises, or `softmax_all`, the top-k entries of the
softmax over all experts, as Qwen-MoE with `norm_topk_prob=False`) is run as
`com.sparsec.MoE` on the block's own input rows and compared with the candidate outputs from
the exported graph, latest first; the block is lifted at the latest output one reading
reproduces (relative L2 <= 1e-4), else it is reported as a miss with the error of the
closest reading. A shared expert added after the routed experts (Qwen2-MoE: a dense SwiGLU
FFN scaled by a sigmoid gate) makes the latest outputs differ; the routed part is lifted at
the earlier output and the shared expert stays as ordinary graph nodes.

ONNX Runtime's contrib op `com.microsoft.MoE` is taken too (`ms_moe.py`): its router is the
MatMul / Gemm that computes its `router_probs` from its input, its weights are read in ORT's
layout, and the lift is checked the same way against ORT's own run of the op.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.moe import MOE_ACTIVATIONS, flat_experts
from sparsec.ir.rewrite import replace_value
from sparsec.passes.moe.experts import Experts, gates, hidden_activations

MATCH_TOL = 1e-4  # relative L2 between the lifted op and the exported block
_MAX_CANDIDATES = 600  # nodes after the TopK searched for the block output
_MAX_OUTPUTS = 6  # post-dominators tried as the block output


@dataclass
class ExportedBlock:
    """One routed block of an exported graph, before it is lifted."""

    name: str
    x: ir.Value  # the block input (router and experts read it)
    outputs: list[ir.Value]  # candidates for what the rest of the graph reads, in graph order
    router_weight: np.ndarray  # [D, E]
    router_bias: np.ndarray  # [E]
    top_k: int
    expert_tensors: list[ir.Value] = field(default_factory=list)  # 3-D constants with E leading
    # Set where the op's attributes fix them (com.microsoft.MoE); else every plausible one is tried.
    readings: list[tuple[str, Experts]] | None = None
    activations: tuple[str, ...] = MOE_ACTIVATIONS
    gatings: tuple[str, ...] = ("softmax", "softmax_all")


@dataclass
class BlockMiss:
    layer: str
    reason: str


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    return None


def _consumers(value: ir.Value) -> list[ir.Node]:
    return [use[0] for use in value.uses()]


def _router(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """([D, E] weight, [E] bias) when `node` multiplies its first input by a constant matrix."""
    if node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    w = _const(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32 or _const(node.inputs[0]) is not None:
        return None
    if node.op_type == "MatMul":
        return w, np.zeros(w.shape[1], np.float32)
    if node.op_type == "Gemm":
        attrs = node.attributes
        if attrs.get("transA") is not None and attrs["transA"].as_int():
            return None
        if any(attrs.get(a) is not None and attrs[a].as_float() != 1.0 for a in ("alpha", "beta")):
            return None
        if attrs.get("transB") is not None and attrs["transB"].as_int():
            w = w.T
        c = _const(node.inputs[2]) if len(node.inputs) > 2 else None
        if c is not None and c.size not in (1, w.shape[1]):
            return None
        bias = np.broadcast_to(c.astype(np.float32), (w.shape[1],)).copy() if c is not None else np.zeros(w.shape[1], np.float32)
        return np.ascontiguousarray(w), bias
    return None


def _reaches_topk(node: ir.Node, depth: int = 6) -> ir.Node | None:
    frontier, seen = [node], {id(node)}
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for out in n.outputs:
                for c in _consumers(out):
                    if c.op_type == "TopK":
                        return c
                    if id(c) not in seen:
                        seen.add(id(c))
                        nxt.append(c)
        frontier = nxt
    return None


def _descendants(start: ir.Node) -> set[int]:
    seen: set[int] = set()
    queue = deque([start])
    while queue:
        n = queue.popleft()
        for out in n.outputs:
            for c in _consumers(out):
                if id(c) not in seen:
                    seen.add(id(c))
                    queue.append(c)
    return seen


def _reaches_output_avoiding(start: ir.Node, avoid: ir.Node, outputs: set[int]) -> bool:
    seen = {id(start)}
    queue = deque([start])
    while queue:
        n = queue.popleft()
        for out in n.outputs:
            if id(out) in outputs:
                return True
            for c in _consumers(out):
                if c is not avoid and id(c) not in seen:
                    seen.add(id(c))
                    queue.append(c)
    return False


def _closed_cone(out: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing `out` from `x` and constants only (None if another input is read)."""
    nodes: dict[int, ir.Node] = {}
    stack = [out]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if v is x or id(v) in seen:
            continue
        seen.add(id(v))
        if v.const_value is not None:
            continue
        node = v.producer()
        if node is None:  # a graph input other than X
            return None
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        stack.extend(i for i in node.inputs if i is not None)
    return list(nodes.values())


_SAME_ROWS = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze")


def _token_source(x: ir.Value, d: int) -> ir.Value:
    """The value the router's input is a reshape of (exporters flatten [B, S, D] to [B*S, D])."""
    while (node := x.producer()) is not None and node.op_type in _SAME_ROWS and node.domain in ("", "ai.onnx"):
        src = node.inputs[0]
        if src is None or (src.shape is not None and (not src.shape.rank() or src.shape[-1] != d)):
            break  # an unknown shape passes: the data check in match_block catches a wrong guess
        x = src
    return x


def _block_outputs(topk: ir.Node, x: ir.Value, order: dict[int, int], graph: ir.Graph) -> list[tuple[ir.Value, list[ir.Node]]]:
    """The first few post-dominators of the TopK computed from X and constants only, in order
    (the first may still be per (token, expert) pair; data picks the one that is X-shaped)."""
    outputs = {id(v) for v in graph.outputs}
    after = sorted((n for n in graph if id(n) in _descendants(topk)), key=lambda n: order[id(n)])
    found: list[tuple[ir.Value, list[ir.Node]]] = []
    for node in after[:_MAX_CANDIDATES]:
        if len(node.outputs) != 1 or _reaches_output_avoiding(topk, node, outputs):
            continue
        cone = _closed_cone(node.outputs[0], x)
        if cone is None:
            break  # later post-dominators read more than the block (the residual)
        found.append((node.outputs[0], cone))
        if len(found) == _MAX_OUTPUTS:
            break
    return found


def find_exported_moe(model: ir.Model) -> tuple[list[ExportedBlock], list[BlockMiss]]:
    """Candidate routed blocks (router -> TopK ... experts -> output) and the near misses."""
    graph = model.graph
    order = {id(n): i for i, n in enumerate(graph)}
    blocks: list[ExportedBlock] = []
    misses: list[BlockMiss] = []
    for node in list(graph):
        router = _router(node)
        if router is None or router[0].shape[1] < 2:
            continue
        topk = _reaches_topk(node)
        if topk is None:
            continue
        name = node.name or node.outputs[0].name
        k = _const(topk.inputs[1]) if len(topk.inputs) > 1 else None
        e = router[0].shape[1]
        if k is None or k.size != 1 or not 1 <= int(k.reshape(-1)[0]) <= e:
            misses.append(BlockMiss(name, "the router's TopK has no constant K in [1, E]"))
            continue
        x = _token_source(node.inputs[0], router[0].shape[0])
        found = _block_outputs(topk, x, order, graph)
        if not found:
            misses.append(BlockMiss(name, "no single block output computed from the router's input and constants"))
            continue
        cone = found[-1][1]
        tensors = {id(v): v for n in cone for v in n.inputs
                   if v is not None and (arr := _const(v)) is not None and arr.ndim == 3 and arr.shape[0] == e
                   and arr.dtype == np.float32}
        if len(tensors) not in (2, 3):
            misses.append(BlockMiss(name, f"expected 2 or 3 stacked expert weight tensors [E={e}, ., .], found {len(tensors)}"))
            continue
        blocks.append(ExportedBlock(name, x, [v for v, _ in found], router[0], router[1], int(k.reshape(-1)[0]),
                                    list(tensors.values())))
    return blocks, misses


def _as(arr: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """[E, rows, cols] readings of a 3-D tensor (as is, or transposed)."""
    out = []
    if arr.shape[1:] == (rows, cols):
        out.append(arr)
    if arr.shape[1:] == (cols, rows):
        out.append(np.transpose(arr, (0, 2, 1)))
    return out


def expert_readings(block: ExportedBlock) -> list[tuple[str, Experts]]:
    """Every plausible (layout, Experts) reading of the block's expert tensors."""
    d = block.router_weight.shape[0]
    arrays = [_const(v) for v in block.expert_tensors]
    e = block.router_weight.shape[1]
    out: list[tuple[str, Experts]] = []
    for perm in itertools.permutations(range(len(arrays))):
        ordered = [arrays[i] for i in perm]
        down = ordered[-1]
        f_options = {s for s in down.shape[1:] if down.shape[1:].count(d) and s != d} or ({d} if down.shape[1:] == (d, d) else set())
        for f in f_options:
            zeros_b1 = np.zeros((e, f), np.float32)
            for w2 in _as(down, f, d):
                if len(ordered) == 2:  # gate and up stacked along one axis
                    for fused in _as(ordered[0], d, 2 * f):
                        for tag, (g, u) in (("gate|up", (fused[:, :, :f], fused[:, :, f:])),
                                            ("up|gate", (fused[:, :, f:], fused[:, :, :f]))):
                            out.append((f"{tag} stacked", Experts(np.ascontiguousarray(g), zeros_b1, np.ascontiguousarray(w2),
                                                                  np.zeros(d, np.float32), np.ascontiguousarray(u))))
                else:
                    for g in _as(ordered[0], d, f):
                        for u in _as(ordered[1], d, f):
                            out.append(("gate, up", Experts(np.ascontiguousarray(g), zeros_b1, np.ascontiguousarray(w2),
                                                            np.zeros(d, np.float32), np.ascontiguousarray(u))))
    return out


@dataclass
class Lifted:
    block: ExportedBlock
    output: ir.Value  # the block output it stands in for
    experts: Experts
    activation: str
    gating: str
    layout: str
    rel_l2: float
    out_shape: tuple[int, ...] | None  # Reshape target when the block's output is not X-shaped
    left_outside: int = 0  # later X-shaped block outputs left as graph nodes (e.g. a shared expert)


def _reading_outputs(block: ExportedBlock, x_rows: np.ndarray) -> Iterator[tuple[str, Experts, str, str, np.ndarray]]:
    """(layout, experts, activation, gating, output rows) per reading, lazily (float64)."""
    logits = x_rows.astype(np.float64) @ block.router_weight + block.router_bias
    for layout, ex in block.readings if block.readings is not None else expert_readings(block):
        for act in block.activations:
            h = hidden_activations(x_rows, ex, act)  # the gating only scales it: computed once
            for gating in block.gatings:
                g = np.repeat(gates(logits, block.top_k, gating), ex.w1.shape[2], axis=1)
                yield layout, ex, act, gating, (h * g) @ flat_experts(ex.w2, rows=True) + ex.b2


def match_block(block: ExportedBlock, x: np.ndarray, ys: list[np.ndarray]) -> Lifted | str:
    """The reading that reproduces the latest block output it can on the block's input x (one
    batch each, any leading shape; ys: the candidate outputs' values), else why none does."""
    d = block.router_weight.shape[0]
    fits = [i for i, y in enumerate(ys) if y.shape[-1] == d and y.size == x.size]
    if not fits:
        return f"no value after the router has the block input's shape {list(x.shape)}"
    x_rows = x.reshape(-1, d)
    refs = {i: ys[i].reshape(-1, d).astype(np.float64) for i in fits}
    scales = {i: max(float(np.linalg.norm(r)), 1e-30) for i, r in refs.items()}
    best: tuple[float, str] = (np.inf, "")
    hit: tuple[int, str, Experts, str, str, float] | None = None  # (output index, layout, experts, act, gating, rel)
    for layout, ex, act, gating, got in _reading_outputs(block, x_rows):
        for i in reversed(fits):  # the latest output first: the most of the block
            if hit is not None and i <= hit[0]:
                break
            rel = float(np.linalg.norm(got - refs[i])) / scales[i]
            if rel <= MATCH_TOL:
                hit = (i, layout, ex, act, gating, rel)
                break
            best = min(best, (rel, f"{layout}, {act}, {gating} gating"))
        if hit is not None and hit[0] == fits[-1]:
            break
    if hit is not None:
        i, layout, ex, act, gating, rel = hit
        y = ys[i]
        return Lifted(block, block.outputs[i], ex, act, gating, layout, rel,
                      None if x.shape == y.shape else (-1, *y.shape[1:]), sum(j > i for j in fits))
    if not np.isfinite(best[0]):
        return "no reading of the expert tensors fits the router's width"
    return f"no com.sparsec.MoE reading reproduces the block (closest: {best[1]}, relative L2 {best[0]:.3g})"


def lift(model: ir.Model, lifted: Lifted) -> ir.Node:
    """Replace the exported block by one `com.sparsec.MoE` node (the old nodes become dead)."""
    graph, block, ex = model.graph, lifted.block, lifted.experts
    base = block.name

    def init(array: np.ndarray, tag: str) -> ir.Value:
        name = f"{base}.moe_{tag}"
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array, dtype=np.float32), name=name))
        graph.register_initializer(value)
        return value

    inputs = [block.x, init(block.router_weight, "router_weight"), init(block.router_bias, "router_bias"),
              init(ex.w1, "w1"), init(ex.b1, "b1"), init(ex.w2, "w2"), init(ex.b2, "b2")]
    if ex.w_up is not None:  # ungated experts (com.microsoft.MoE without fc3)
        inputs.append(init(ex.w_up, "w_up"))
    node = ir.Node(DOMAIN, "MoE", inputs, attributes=[
        ir.AttrInt64("top_k", block.top_k), ir.AttrString("activation", lifted.activation),
        ir.AttrString("gating", lifted.gating)], name=f"{base}/moe", num_outputs=1)
    result = node.outputs[0]
    result.name = f"{base}/moe_out"
    producer = lifted.output.producer()
    assert producer is not None
    graph.insert_after(producer, node)
    new = result
    if lifted.out_shape is not None:  # the exported block ends in another shape, e.g. [B*S, D]: keep it
        target = ir.Value(name=f"{base}/moe_shape", const_value=ir.tensor(np.array(lifted.out_shape, np.int64)))
        graph.register_initializer(target)
        reshape = ir.Node("", "Reshape", [result, target], name=f"{base}/moe_reshape", num_outputs=1)
        reshape.outputs[0].name = f"{base}/moe_reshaped"
        graph.insert_after(node, reshape)
        new = reshape.outputs[0]
    replace_value(lifted.output, new)
    return node
