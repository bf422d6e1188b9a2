"""The report's picture of routed experts: per MoE layer, how often each expert is selected
and the fraction of experts that runs per token."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsec.figures import figure, png_bytes

PASSES = ("moefy-ffn", "prune-experts", "merge-experts", "moe-top-k")
MAX_LAYERS_DRAWN = 24


def moe_layers(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MoE decisions that carry a routing histogram (`selected_share`, one entry per expert)."""
    return [d for d in decisions if d.get("pass") in PASSES and d.get("selected_share")]


def _short(name: str) -> str:
    """The block's index path (layer.3, h.11, layers.0) when the name has one, else its tail."""
    import re

    hit = re.search(r"(?:layers?|h|blocks?)[._](\d+)", name)
    return hit.group(0) if hit else name.strip("/").rsplit("/", 1)[-1]


def _active(d: dict[str, Any]) -> float | None:
    experts = d.get("experts_after") or d.get("experts")
    top_k = d.get("top_k_after") or d.get("top_k")
    return None if not experts or not top_k else top_k / experts


def moe_usage_plot(decisions: list[dict[str, Any]]) -> bytes | None:
    """PNG: one small bar chart per layer (share of tokens selecting each expert; for the
    slimming passes, the experts as they were before the pass), titled with the active fraction."""
    layers = moe_layers(decisions)[:MAX_LAYERS_DRAWN]
    if not layers:
        return None
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, _ = figure((3.0 * cols, 2.1 * rows + 0.6))
    fig.clear()
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, d in zip(axes, layers, strict=False):
        share = np.asarray(d["selected_share"], float)
        ax.bar(np.arange(len(share)), share, color="tab:blue")
        ax.axhline(share.mean(), color="grey", lw=0.8, ls="--")
        active = _active(d)
        ax.set_title(f"{_short(d['layer'])[:28]} ({d['pass']})" + (f", active {active:.0%}" if active else ""), fontsize=7)
        ax.set_xticks(np.arange(len(share)))
        ax.set_xlabel("expert", fontsize=7)
        ax.set_ylabel("tokens selecting it", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(layers):]:
        ax.axis("off")
    fig.suptitle("Expert usage per MoE layer (dashed: mean)", fontsize=8)
    return png_bytes(fig, legend=False)


def moe_report(manifest: dict[str, Any]) -> list[str]:
    """Markdown lines: per MoE layer, experts, top-k, active fraction, usage spread and fidelity."""
    layers = moe_layers(manifest.get("decisions", []))
    if not layers:
        return []
    lines = ["", "## Routed experts", "",
             "| layer | pass | decision | active fraction | most / least used expert share | block cosine |",
             "|---|---|---|---|---|---|"]
    for d in layers:
        share = d["selected_share"]
        active = _active(d)
        cosine = f"{d['cosine']:.4f}" if isinstance(d.get("cosine"), (int, float)) else "-"
        lines.append(f"| {d['layer']} | {d['pass']} | {d['decision']} | {f'{active:.3f}' if active else '-'} "
                     f"| {max(share):.3f} / {min(share):.3f} | {cosine} |")
    if "moe_usage.png" in manifest.get("files", {}):
        lines += ["", "![expert usage](moe_usage.png)"]
    return lines
