"""Per-head layouts under a density budget, chosen from calibration profiles (MoA-style).

Every head of every attention block is an item of the shared allocator: its options are
the dense layout (do nothing) and each candidate (local window W blocks, S sink blocks);
an option's damage is the softmax mass it drops (1 - captured, from `head_profile`), its
benefit the block pairs it skips. `meet_benefit` then keeps the most mass while skipping
(1 - density) of all block pairs, so heads that look far get wide windows and heads that
look near get narrow ones, instead of one window for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.allocator import LayerOptions, meet_benefit
from sparsec.dialect.attention import ALL_BLOCKS, BlockLayout
from sparsec.passes.attention.head_profile import HeadProfile

SINK_CANDIDATES = (0, 1, 2)


@dataclass(frozen=True)
class HeadLayout:
    local: int  # blocks, or ALL_BLOCKS
    sinks: int
    captured: float  # fraction of the dense softmax mass kept on calibration data
    kept_blocks: int
    dense_blocks: int


def window_candidates(nk: int) -> list[int]:
    """Local windows in blocks: 1, 2, 3, 4, 6, 8, 12, ... below nk (every key block)."""
    out, w = [], 1
    while w < nk:
        out.append(w)
        w = w + 1 if w < 4 else int(round(w * 1.5))
    return out


def allowed_blocks(local: int, sinks: int, causal: bool, block: int, nk: int) -> np.ndarray:
    return BlockLayout(block, causal, (local,), (sinks,)).block_allowed(0, nk, nk, 0)


def _options(profile: HeadProfile, causal: bool) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (local, sinks) pairs with the first one dense: per-head captured mass
    [H, options], kept block pairs [options] (over query blocks that hold rows)."""
    nk = profile.mass.shape[1]
    present = profile.rows > 0
    cands: list[tuple[int, int]] = [(ALL_BLOCKS, 0)]
    seen: set[bytes] = set()
    allowed_sets = [allowed_blocks(ALL_BLOCKS, 0, causal, profile.block, nk)]
    seen.add((allowed_sets[0] & present[:, None]).tobytes())
    for w in window_candidates(nk):
        for s in SINK_CANDIDATES:
            a = allowed_blocks(w, s, causal, profile.block, nk)
            key = (a & present[:, None]).tobytes()
            if key in seen:  # same blocks as an earlier candidate
                continue
            seen.add(key)
            cands.append((w, s))
            allowed_sets.append(a)
    captured = np.stack([profile.captured(a[None]) for a in allowed_sets], axis=1)
    kept = np.array([int((a & present[:, None]).sum()) for a in allowed_sets])
    return cands, captured, kept, allowed_sets[0]


def choose_layouts(profiles: dict[str, HeadProfile], causal: dict[str, bool], density: float) -> dict[str, list[HeadLayout]]:
    """Per block name: one HeadLayout per head, together keeping about `density` of the
    block pairs of all heads and blocks (the allocator's price search stops at the first
    choice that skips at least 1 - density; the narrowest candidates bound how low it goes)."""
    items: list[LayerOptions] = []
    index: list[tuple[str, int, list[tuple[int, int]], np.ndarray, np.ndarray]] = []
    total_dense = 0
    for name, prof in profiles.items():
        cands, captured, kept, _ = _options(prof, causal[name])
        for h in range(captured.shape[0]):
            damage = np.maximum(captured[h, 0] - captured[h], 0.0)
            items.append(LayerOptions(f"{name}#h{h}", [f"{w}/{s}" for w, s in cands], damage,
                                      (kept[0] - kept).astype(np.float64)))
            index.append((name, h, cands, captured[h], kept))
            total_dense += int(kept[0])
    budget = (1.0 - density) * total_dense
    picks = meet_benefit(items, budget) if density < 1.0 else [0] * len(items)
    out: dict[str, list[HeadLayout]] = {name: [] for name in profiles}
    for (name, _h, cands, cap, kept), pick in zip(index, picks, strict=True):
        w, s = cands[pick]
        out[name].append(HeadLayout(w, s, float(cap[pick] / max(cap[0], 1e-12)), int(kept[pick]), int(kept[0])))
    return out


def uniform_layout(profiles: dict[str, HeadProfile], causal: dict[str, bool], density: float) -> tuple[int, int]:
    """The one (local, sinks=0) window for every head whose total density is closest to
    `density` without exceeding it (the baseline `auto` has to beat)."""
    best = (1, 0)
    for w in window_candidates(max(p.mass.shape[1] for p in profiles.values())) or [1]:
        kept = total = 0
        for name, prof in profiles.items():
            _, _, k, _ = _options(prof, causal[name])
            nk = prof.mass.shape[1]
            a = allowed_blocks(w, 0, causal[name], prof.block, nk) & (prof.rows > 0)[:, None]
            kept += int(a.sum()) * prof.mass.shape[0]
            total += int(k[0]) * prof.mass.shape[0]
        if kept <= density * total:
            best = (w, 0)
    return best
