"""The report's picture of sparse-attention layouts: one small block grid per layer and head."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsec.dialect.attention import BlockLayout
from sparsec.figures import figure, png_bytes

PASS = "sparse-attention"
MAX_HEADS_DRAWN = 16


def attention_layouts(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sparse-attention decisions that carry a drawable layout."""
    return [d for d in decisions if d.get("pass") == PASS and "local_blocks" in d and "key_len" in d]


def _topk(d: dict[str, Any], head: int) -> int:
    t = d.get("topk_blocks") or [0]
    return int(t[head] if len(t) > 1 else t[0])


def _grid(d: dict[str, Any], head: int) -> np.ndarray:
    """Static blocks 1; with run-time top-k, the blocks it may pick (chosen per input) 0.45."""
    layout = BlockLayout(d["block"], bool(d["causal"]), tuple(d["local_blocks"]), tuple(d["sink_blocks"]))
    nq, nk = -(-d["query_len"] // d["block"]), -(-d["key_len"] // d["block"])
    off = (d["key_len"] - d["query_len"]) // d["block"]
    static = layout.block_allowed(head if layout.heads() > 1 else 0, nq, nk, off)
    grid = static.astype(float)
    if _topk(d, head):
        grid[~static & BlockLayout(d["block"], bool(d["causal"])).block_allowed(0, nq, nk, off)] = 0.45
    return grid


def attention_layout_plot(decisions: list[dict[str, Any]]) -> bytes | None:
    """PNG: rows are attention blocks, columns heads; dark = key block read (query blocks down)."""
    layers = attention_layouts(decisions)
    if not layers:
        return None
    heads = min(max(d["heads"] for d in layers), MAX_HEADS_DRAWN)
    fig, _ = figure((max(4.0, 0.9 * heads + 1.5), max(2.0, 0.95 * len(layers) + 0.8)))
    fig.clear()
    axes = fig.subplots(len(layers), heads, squeeze=False)
    for r, d in enumerate(layers):
        errors = d.get("head_error")
        for h in range(heads):
            ax = axes[r][h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= d["heads"]:
                ax.axis("off")
                continue
            ax.imshow(_grid(d, h), cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
            if r == 0:
                ax.set_title(f"h{h}", fontsize=7)
            label = f"{errors[h]:.2g}" if errors is not None else ""
            if _topk(d, h):
                label += f" +{_topk(d, h)}"
            if label:
                ax.set_xlabel(label.strip(), fontsize=6)
        axes[r][0].set_ylabel(d["layer"].split("/")[-3] if d["layer"].count("/") >= 3 else f"#{r}", fontsize=6)
    fig.suptitle("Blocks read (dark; grey: candidates of run-time top-k, +K picked per query block): "
                 "layers down, heads across"
                 + ("; label: head output error" if any("head_error" in d for d in layers) else ""), fontsize=7)
    return png_bytes(fig, legend=False)


def attention_report(manifest: dict[str, Any]) -> list[str]:
    """Markdown lines: the layouts chosen per layer, with the picture when written."""
    layers = attention_layouts(manifest.get("decisions", []))
    if not layers:
        return []
    lines = ["", "## Sparse attention", "",
             "| attention block | heads | density | local blocks | sink blocks | top-k blocks (run time) | head error (mean) |",
             "|---|---|---|---|---|---|---|"]
    for d in layers:
        err = d.get("head_error")
        mean = f"{float(np.mean(err)):.3g}" if err else "-"
        topk = d.get("topk_blocks") or [0]
        lines.append(f"| {d['layer']} | {d['heads']} | {d['density']:.3f} | {d['local_blocks']} | {d['sink_blocks']} "
                     f"| {topk if any(topk) else '-'} | {mean} |")
    if "attention_layouts.png" in manifest.get("files", {}):
        lines += ["", "![attention layouts](attention_layouts.png)"]
    return lines
