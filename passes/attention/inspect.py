"""The attention section of `sparsec inspect`: blocks found, and each miss with its reason."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir


def attention_summary(model: ir.Model, dims: dict[str, int]) -> dict[str, Any]:
    """{"blocks": [{name, heads, kv_heads, q, k, dim, scale, mask}], "missed": [{name, op, reason}]}"""
    from sparsec.ir.shapes import infer_concrete_shapes
    from sparsec.passes.attention.match import find_attention

    matches, misses = find_attention(model, infer_concrete_shapes(model, dims))
    blocks = []
    for m in matches:
        b, h, sq, d = m.q_shape
        mask = "bias" if m.bias is not None else "where" if m.where_mask is not None else "none"
        blocks.append({"name": m.name, "batch": b, "heads": h, "kv_heads": m.kv_heads, "q": sq, "k": m.seq_k,
                       "dim": d, "scale": round(m.scale, 6), "mask": mask})
    return {"blocks": blocks, "missed": [{"name": x.name, "op": x.op, "reason": x.reason} for x in misses]}


def attention_lines(summary: dict[str, Any]) -> list[str]:
    """The section as text lines (empty when the model has neither attention nor candidates)."""
    if not summary["blocks"] and not summary["missed"]:
        return []
    lines = [f"attention: {len(summary['blocks'])} block(s) found, {len(summary['missed'])} missed"]
    for b in summary["blocks"]:
        gqa = f" (kv heads {b['kv_heads']})" if b["kv_heads"] != b["heads"] else ""
        lines.append(f"  found  {b['name'][:48]:48} heads {b['heads']}{gqa} x {b['dim']}, q {b['q']}, "
                     f"k {b['k']}, scale {b['scale']:.4g}, mask {b['mask']}")
    for x in summary["missed"]:
        lines.append(f"  missed {x['name'][:48]:48} {x['op']}: {x['reason']}")
    return lines
