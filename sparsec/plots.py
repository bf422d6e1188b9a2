"""Pictures and tables of the quality decisions: sensitivity curves and per-layer choices.

Both are built from the manifest's decision records (`layer-sensitivity` and `allocate`
record a `sensitivity` curve per layer; `allocate` records the choice and why), so any
artifact can be re-plotted from its manifest alone.
"""

from __future__ import annotations

import math
from typing import Any

from sparsec.figures import png_bytes
from sparsec.passes.sparsify.patterns import parse_pattern


def _curves(decisions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    curves: dict[str, dict[str, float]] = {}
    for d in decisions:
        if d.get("pass") in ("layer-sensitivity", "allocate") and isinstance(d.get("sensitivity"), dict):
            curves[d["layer"]] = {k: v for k, v in d["sensitivity"].items() if v is not None}
    return curves


def _choices(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d.get("pass") == "allocate"]


def sensitivity_plot(curves: dict[str, dict[str, float]]) -> bytes:
    """Damage (log) against kept density, one line per layer, coloured by depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    cmap = plt.get_cmap("viridis")
    for i, (layer, curve) in enumerate(curves.items()):
        points = sorted((parse_pattern(p).density, max(v, 1e-9)) for p, v in curve.items() if p != "dense")
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, lw=1, color=cmap(i / max(len(curves) - 1, 1)), label=layer if len(curves) <= 12 else None)
    ax.set_yscale("log")
    ax.set_xlabel("kept density of the pattern")
    ax.set_ylabel("output damage (1 - cosine) when only this layer is pruned")
    ax.set_title("Layer sensitivity (colour: depth, dark = early)")
    if len(curves) <= 12:
        ax.legend(fontsize=6)
    return png_bytes(fig, legend=False)


def allocation_plot(choices: list[dict[str, Any]]) -> bytes:
    """Kept density chosen per layer, labelled with the pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["layer"] for c in choices]
    density = [parse_pattern(c["decision"]).density for c in choices]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(names)), 4.0), dpi=100)
    bars = ax.bar(range(len(names)), density, color=["#999999" if d == 1.0 else "#3b75af" for d in density])
    for bar, c in zip(bars, choices, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), c["decision"], ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("kept density")
    ax.set_title("Per-layer choice of `allocate` (grey: left dense)")
    return png_bytes(fig, legend=False)


def quality_plots(decisions: list[dict[str, Any]]) -> dict[str, bytes]:
    """Artifact files: sensitivity.png and allocation.png where the decisions hold them."""
    files = {}
    curves = _curves(decisions)
    if curves:
        files["sensitivity.png"] = sensitivity_plot(curves)
    choices = _choices(decisions)
    if choices:
        files["allocation.png"] = allocation_plot(choices)
    return files


def quality_report(manifest: dict[str, Any]) -> list[str]:
    """Markdown lines for the report: allocation summary, choices and why, pictures."""
    lines: list[str] = []
    choices = _choices(manifest["decisions"])
    alloc = next((p for p in manifest["passes"] if p["pass"].startswith("allocate")), None)
    if alloc is not None:
        s = alloc["stats"]
        lines += ["", "## Allocation", ""]
        lines.append(
            f"Mode **{s.get('mode')}**: {s.get('layers_sparse')}/{s.get('layers_considered')} layers sparse, "
            f"N:M layers hold {100 * s.get('nm_param_fraction', 0):.1f}% of the prunable parameters; predicted damage "
            f"{s.get('predicted_damage')}, measured mean cosine on held-out calibration samples **{s.get('measured_fidelity')}**"
            + (f", predicted speedup **{s['predicted_speedup']:.2f}x**" if "predicted_speedup" in s else "")
            + f" ({s.get('rounds')} round(s))."
        )
    if choices:
        lines += ["", "| layer | choice | predicted damage | saving | why |", "|---|---|---|---|---|"]
        for c in choices:
            dmg = c.get("predicted_damage")
            dmg_text = "-" if dmg is None or (isinstance(dmg, float) and math.isinf(dmg)) else f"{dmg:.3g}"
            lines.append(f"| {c['layer']} | {c['decision']} | {dmg_text} | {c.get('benefit', 0):.4g} {c.get('unit', '')} | {c.get('why', '')} |")
    if "allocation.png" in manifest["files"]:
        lines += ["", "![per-layer choices](allocation.png)"]
    if "sensitivity.png" in manifest["files"]:
        lines += ["", "## Layer sensitivity", "", "![sensitivity curves per layer](sensitivity.png)"]
    return lines
