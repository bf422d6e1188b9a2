"""What a crop removed, for the artifact's report: a table and a per-group bar chart."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def crop_groups(decisions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Groups the crop removed channels from."""
    return [d for d in decisions if d.get("pass") == "crop-channels" and "group" in d and d.get("decision") != "refused"]


def refused_groups(decisions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Groups the plan review refused to crop, with the reason."""
    return [d for d in decisions if d.get("pass") == "crop-channels" and d.get("decision") == "refused"]


def crop_table(decisions: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per cropped group (channels before -> after, parameters)."""
    decisions = list(decisions)
    rows, refused = crop_groups(decisions), refused_groups(decisions)
    if not rows and not refused:
        return []
    lines = ["", "## Channel crops", ""]
    if rows:
        lines += ["| group | channels | kept | MACs saved | damage | parameters cropped | lossy |", "|---|---|---|---|---|---|---|"]
        for d in rows:
            params = ", ".join(sorted(d["params"]))
            saved = f"{100 * d['macs_saved']:.2f}%" if "macs_saved" in d else ""
            damage = f"{d['damage']:.4g}" if "damage" in d else ""
            lines.append(
                f"| {d['layer']} | {d['channels']} | {d['kept']} | {saved} | {damage} | {params} | {'yes' if d.get('lossy') else 'no'} |"
            )
    if refused:
        lines += ["", "Refused by the plan review (not cropped):", "", "| group | channels | planned kept | MACs saved | damage | reason |",
                  "|---|---|---|---|---|---|"]
        for d in refused:
            lines.append(
                f"| {d['layer']} | {d['channels']} | {d['planned_kept']} | {100 * d['macs_saved']:.2f}% | {d['damage']:.4g} | {d['refused']} |"
            )
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
