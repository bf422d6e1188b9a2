"""What an attention block's mask does: nothing, causal masking, or something else.

A constant mask is read directly. A mask computed from the inputs (padding masks built from
`attention_mask`) is evaluated on the pass's sample inputs: a mask that blocks every future key
there is treated as causal, and still applied as the op's bias, so the result stays exact
as long as the mask's causal part does not depend on the inputs (true of every exporter seen).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.passes.attention.match import MASK_FILL_MAX, AttentionMatch


@dataclass(frozen=True)
class MaskFacts:
    causal: bool  # every key after its query is blocked
    removable: bool  # the mask adds nothing beyond (causal if causal): the op needs no bias
    evidence: str  # "constant" or "sampled"


def _blocked(match: AttentionMatch, array: np.ndarray) -> np.ndarray:
    """bool, broadcastable to the scores: which (query, key) pairs the mask removes."""
    if match.where_mask is not None:
        _, index = match.where_mask
        keep = array.astype(bool)
        return ~keep if index == 1 else keep
    return array <= MASK_FILL_MAX


def analyse(match: AttentionMatch, array: np.ndarray, constant: bool) -> MaskFacts:
    b, h, sq, _ = match.q_shape
    sk = match.seq_k
    blocked = np.broadcast_to(_blocked(match, array), (b, h, sq, sk))
    future = np.arange(sk)[None, :] > (np.arange(sq)[:, None] + sk - sq)
    causal = bool(blocked[..., future].all())
    expected = future if causal else np.zeros_like(future)
    exact_pattern = bool((blocked == expected).all())
    if match.where_mask is None:
        # An additive mask also adds its finite part (a position bias): removable only if zero.
        finite = np.where(blocked, 0.0, np.broadcast_to(array, blocked.shape))
        exact_pattern = exact_pattern and not np.any(finite)
    return MaskFacts(causal, constant and exact_pattern, "constant" if constant else "sampled")


def mask_value(match: AttentionMatch) -> ir.Value | None:
    if match.where_mask is not None:
        return match.where_mask[0].inputs[0]
    return match.bias


def constant_array(value: ir.Value) -> np.ndarray | None:
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def depends_on_inputs(value: ir.Value) -> bool:
    """Whether any graph input reaches `value` (a mask built from constants alone, e.g. a
    Trilu of a constant, is a constant the exporter left unfolded)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        producer = v.producer()
        if producer is None:
            if v.const_value is None:  # a graph input (or an initializer without data)
                return True
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in producer.attributes.values()):
            return True  # subgraphs may read outer values: not analysed
        stack.extend(x for x in producer.inputs if x is not None)
    return False


def sample_values(model: ir.Model, values: list[ir.Value], dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """The values' contents on the pass's sample inputs (one run of a copy of the model
    that outputs them)."""
    if not values:
        return {}
    from sparsec.ir.io import inline_copy
    from sparsec.numerics import evaluate, sample_inputs

    feeds = sample_inputs(model, dims=dims, seed=seed)
    copy = inline_copy(model)
    by_name = {}
    for node in copy.graph:
        for out in node.outputs:
            by_name[out.name] = out
    wanted = [by_name[v.name] for v in values if v.name in by_name]
    copy.graph.outputs.extend(w for w in wanted if not w.is_graph_output())
    outputs = evaluate(copy, feeds)
    names = [o.name for o in copy.graph.outputs]
    return {n: a for n, a in zip(names, outputs, strict=True) if n in {v.name for v in values}}
