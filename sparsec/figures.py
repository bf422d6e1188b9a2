"""Shared matplotlib plumbing for the report's pictures (headless, deterministic PNGs).

Imports nothing of sparsec: `figures_worker.py` loads this file alone in a fresh interpreter."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def figure(size: tuple[float, float] = (7.5, 4.5)) -> tuple[Any, Any]:
    """A new figure and axes on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=100)


def per_layer_axes(names: Sequence[str], ylabel: str, title: str) -> tuple[Any, Any]:
    """A figure whose x axis lists layers (wide enough for every name)."""
    fig, ax = figure((max(6.0, 0.28 * len(names)), 4.0))
    ax.set_xticks(list(range(len(names))))
    ax.set_xticklabels(list(names), rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


def png_bytes(fig: Any, *, legend: bool = True) -> bytes:
    """Finish the figure (legend, layout) and return it as PNG bytes without a timestamp."""
    import matplotlib.pyplot as plt

    if legend:
        for ax in fig.axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def bytes_per_layer_png(names: Sequence[str], dense_mb: Sequence[float], sparse_mb: Sequence[float]) -> bytes:
    """The report's per-layer weight bytes bar chart, dense vs packed sparse."""
    fig, ax = per_layer_axes(names, "weight MB", "Weight bytes per layer")
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], list(dense_mb), width=0.4, label="dense")
    ax.bar([i + 0.2 for i in x], list(sparse_mb), width=0.4, label="packed sparse")
    return png_bytes(fig)
