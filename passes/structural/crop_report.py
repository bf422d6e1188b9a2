"""What a crop removed, for the artifact's report: a table and a per-group bar chart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def crop_groups(decisions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [d for d in decisions if d.get("pass") == "crop-channels" and "group" in d]


def crop_table(decisions: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per cropped group (channels before -> after, parameters)."""
    rows = crop_groups(decisions)
    if not rows:
        return []
    lines = ["", "## Channel crops", "", "| group | channels | kept | parameters cropped | lossy |", "|---|---|---|---|---|"]
    for d in rows:
        params = ", ".join(sorted(d["params"]))
        lines.append(f"| {d['layer']} | {d['channels']} | {d['kept']} | {params} | {'yes' if d.get('lossy') else 'no'} |")
    return lines


def crop_plot(decisions: Iterable[Mapping[str, Any]]) -> bytes | None:
    """Stacked bars per cropped group: kept and removed fraction; None without a crop."""
    rows = crop_groups(decisions)
    if not rows:
        return None
    from sparsec.figures import per_layer_axes, png_bytes

    names = [f"{d['layer']} ({d['kept']}/{d['channels']})" for d in rows]
    kept = [d["kept"] / d["channels"] for d in rows]
    gone = [1 - k for k in kept]
    fig, ax = per_layer_axes(names, "fraction of channels", "Channels kept per coupled group (kept/total)")
    x = list(range(len(names)))
    ax.bar(x, kept, label="kept")
    ax.bar(x, gone, bottom=kept, label="cropped")
    return png_bytes(fig)
