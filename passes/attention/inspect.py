"""The attention section of `sparsec inspect`: blocks found, and each miss with its reason."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir


def attention_summary(model: ir.Model, dims: dict[str, int]) -> dict[str, Any]:
    """{"blocks": [{name, heads, kv_heads, q, k, dim, scale, mask}], "sparse": [{name, block, causal,
    local_blocks, sink_blocks, topk_blocks, block_mask}], "missed": [{name, op, reason}]}"""
    from sparsec.ir.shapes import infer_concrete_shapes
    from sparsec.passes.attention.match import find_attention

    matches, misses = find_attention(model, infer_concrete_shapes(model, dims))
    blocks = []
    for m in matches:
        b, h, sq, d = m.q_shape
        mask = "bias" if m.bias is not None else "where" if m.where_mask is not None else "none"
        blocks.append({"name": m.name, "batch": b, "heads": h, "kv_heads": m.kv_heads, "q": sq, "k": m.seq_k,
                       "dim": d, "scale": round(m.scale, 6), "mask": mask})
    from sparsec.dialect import DOMAIN
    from sparsec.dialect.attention import OP_TYPE, BlockLayout

    sparse = []
    for node in model.graph:  # blocks already rewritten (opt outputs, artifacts raised by inspect)
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            lay = BlockLayout.of(node)
            sparse.append({"name": node.name, "block": lay.block, "causal": lay.causal,
                           "local_blocks": list(lay.local_blocks), "sink_blocks": list(lay.sink_blocks),
                           "topk_blocks": list(lay.topk_blocks), "summary_blocks": list(lay.summary_blocks),
                           "block_mask": lay.block_mask is not None})
    return {"blocks": blocks, "sparse": sparse,
            "missed": [{"name": x.name, "op": x.op, "reason": x.reason} for x in misses]}


def attention_lines(summary: dict[str, Any]) -> list[str]:
    """The section as text lines (empty when the model has neither attention nor candidates)."""
    if not summary["blocks"] and not summary["missed"] and not summary["sparse"]:
        return []
    lines = [f"attention: {len(summary['blocks'])} block(s) found, {len(summary['missed'])} missed, "
             f"{len(summary['sparse'])} already sparse"]
    for b in summary["sparse"]:
        layout = "block mask" if b["block_mask"] else f"local {b['local_blocks']} sinks {b['sink_blocks']} blocks"
        if any(b.get("topk_blocks", [0])):
            layout += f" + top-{b['topk_blocks']} at run time"
        if any(b.get("summary_blocks", [0])):
            layout += f" + summary keys {b['summary_blocks']}"
        lines.append(f"  sparse {b['name'][:48]:48} block {b['block']}, {layout}, causal {int(b['causal'])}")
    for b in summary["blocks"]:
        gqa = f" (kv heads {b['kv_heads']})" if b["kv_heads"] != b["heads"] else ""
        lines.append(f"  found  {b['name'][:48]:48} heads {b['heads']}{gqa} x {b['dim']}, q {b['q']}, "
                     f"k {b['k']}, scale {b['scale']:.4g}, mask {b['mask']}")
    for x in summary["missed"]:
        lines.append(f"  missed {x['name'][:48]:48} {x['op']}: {x['reason']}")
    return lines
