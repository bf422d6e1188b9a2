"""Per-head layouts under a density budget, chosen from calibration profiles (MoA-style).

Every head of every attention block is an item of the shared allocator: its options are
the dense layout (do nothing) and each candidate (local window W blocks, S sink blocks) of
its profile (static windows, and narrow windows plus run-time top-k blocks, each also with
summary keys when profiled); an option's damage is the head's relative output error under it
(`head_profile`), its benefit the block pairs it skips. `meet_benefit` then keeps the
least total error while skipping (1 - density) of all block pairs, so heads that need far
keys get wide windows and heads that look near get narrow ones, instead of one window for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.allocator import LayerOptions, meet_benefit
from sparsec.passes.attention.head_profile import HeadProfile


@dataclass(frozen=True)
class HeadLayout:
    local: int  # blocks, or ALL_BLOCKS
    sinks: int
    topk: int  # key blocks picked at run time (0: static layout)
    captured: float  # fraction of the dense softmax mass kept on calibration data
    error: float  # relative squared output error of the head on calibration data
    kept_blocks: float  # block pairs (a summary key: 1 / block of a pair)
    dense_blocks: int
    summary: bool = False  # left-out key blocks read as summary keys (the op's summary_blocks)


def choose_layouts(profiles: dict[str, HeadProfile], density: float) -> dict[str, list[HeadLayout]]:
    """Per block name: one HeadLayout per head, together keeping about `density` of the
    block pairs of all heads and blocks (the allocator's price search stops at the first
    choice that skips at least 1 - density; the narrowest candidates bound how low it goes)."""
    items: list[LayerOptions] = []
    index: list[tuple[str, int]] = []
    for name, prof in profiles.items():
        benefit = (prof.kept[0] - prof.kept).astype(np.float64)
        for h in range(prof.error.shape[0]):
            # A candidate that skips nothing (it covers every block with rows) is dense in effect.
            damage = np.where((benefit > 0) | (np.arange(len(benefit)) == 0), np.maximum(prof.error[h], 0.0), np.inf)
            names = [f"{w}/{s}/{t}" + ("/summary" if prof.summarised(c) else "")
                     for c, (w, s, t) in enumerate(prof.layouts)]
            items.append(LayerOptions(f"{name}#h{h}", names, damage, benefit))
            index.append((name, h))
    total_dense = sum(int(p.kept[0]) * p.error.shape[0] for p in profiles.values())
    picks = meet_benefit(items, (1.0 - density) * total_dense) if density < 1.0 else [0] * len(items)
    out: dict[str, list[HeadLayout]] = {name: [] for name in profiles}
    for (name, h), pick in zip(index, picks, strict=True):
        prof = profiles[name]
        w, s, t = prof.layouts[pick]
        out[name].append(HeadLayout(w, s, t, float(prof.captured[h, pick]), float(prof.error[h, pick]),
                                    float(prof.kept[pick]), int(prof.kept[0]), prof.summarised(pick)))
    return out


def static_only(prof: HeadProfile) -> HeadProfile:
    """The profile with its run-time top-k candidates ruled out (infinite damage)."""
    from dataclasses import replace

    dynamic = np.array([t > 0 for _, _, t in prof.layouts])
    error = prof.error.copy()
    error[:, dynamic] = np.inf
    return replace(prof, error=error)


def uniform_window(profiles: dict[str, HeadProfile], density: float) -> int:
    """The widest single window (no sinks) for every head whose total density stays within
    `density` (the baseline `auto` has to beat at equal density)."""
    best = 1
    widths = sorted({w for p in profiles.values() for w, s, t in p.layouts if s == 0 and t == 0 and w > 0})
    for w in widths:
        kept = total = 0
        for prof in profiles.values():
            heads = prof.error.shape[0]
            i = prof.layouts.index((w, 0, 0)) if (w, 0, 0) in prof.layouts else 0
            kept += int(prof.kept[i]) * heads
            total += int(prof.kept[0]) * heads
        if kept <= density * total:
            best = w
    return best
