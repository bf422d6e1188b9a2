"""The recovery picture: training loss and held-out cosine against the step."""

from __future__ import annotations

from typing import Any

from sparsec.figures import figure, png_bytes


def recovery_plot(result: dict[str, Any]) -> bytes | None:
    """From a `FinetuneResult.to_dict()` (as the manifest records it); None without steps."""
    losses, curve = result.get("losses") or [], result.get("held_out_curve") or []
    if not losses:
        return None
    fig, ax = figure()
    ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1, color="tab:blue", label="training loss (distillation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if curve:
        twin = ax.twinx()
        twin.plot([s for s, _ in curve], [v for _, v in curve], marker="o", ms=3, color="tab:orange", label="held-out cosine vs dense")
        twin.set_ylabel("held-out mean output cosine")
        twin.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(f"Fine-tuning recovery (best step {result.get('best_step')}, {result.get('stopped')})")
    return png_bytes(fig, legend=False)


__all__ = ["recovery_plot"]
