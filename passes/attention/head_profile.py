"""Per-head attention profiles on calibration data: what each candidate layout would cost.

The `auto` layouts (MoA-style) are chosen from these profiles. For every head and every
candidate layout (local window W blocks + S sink blocks) the profile holds:
- the softmax mass the layout keeps (what the dense head spent on the blocks it keeps), and
- the relative output error of the head restricted to the layout (softmax renormalised
  over the kept keys, as the op computes it): sum ||O' - O||^2 / sum ||O||^2 over rows.
The error is what the allocator minimises: a diffuse head loses much mass to a narrow
window yet averages similar values, so mass alone overrates it. Both are read from each
block's own Softmax output and V, so every mask the export applies is already in them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import CalibrationRunner
from sparsec.dialect.attention import ALL_BLOCKS, BlockLayout
from sparsec.passes.attention.match import AttentionMatch

log = logging.getLogger("sparsec.passes.attention")

SINK_CANDIDATES = (0, 1, 2)


def window_candidates(nk: int) -> list[int]:
    """Local windows in blocks: 1, 2, 3, 4, 6, 9, 14, ... below nk (every key block)."""
    out, w = [], 1
    while w < nk:
        out.append(w)
        w = w + 1 if w < 4 else int(round(w * 1.5))
    return out


def allowed_blocks(local: int, sinks: int, causal: bool, block: int, nk: int) -> np.ndarray:
    """bool [nk, nk] over absolute (query block, key block) pairs."""
    return BlockLayout(block, causal, (local,), (sinks,)).block_allowed(0, nk, nk, 0)


def candidates(nk: int, causal: bool, block: int) -> list[tuple[int, int]]:
    """(local, sinks) pairs, dense first, without two that keep the same blocks."""
    out: list[tuple[int, int]] = [(ALL_BLOCKS, 0)]
    seen = {allowed_blocks(ALL_BLOCKS, 0, causal, block, nk).tobytes()}
    for w in window_candidates(nk):
        for s in SINK_CANDIDATES:
            key = allowed_blocks(w, s, causal, block, nk).tobytes()
            if key not in seen:
                seen.add(key)
                out.append((w, s))
    return out


@dataclass(frozen=True)
class HeadProfile:
    """One attention block's profile over `layouts` (dense first)."""

    name: str
    block: int
    causal: bool
    layouts: list[tuple[int, int]]
    captured: np.ndarray  # [H, C] fraction of the softmax mass kept
    error: np.ndarray  # [H, C] relative squared output error
    kept: np.ndarray  # [C] block pairs kept per head (over query blocks that hold rows)


def _probabilities(x: np.ndarray, m: AttentionMatch) -> np.ndarray | None:
    """The Softmax output as [B, H, Sq, Sk], or None when its layout is not that."""
    _, heads, sq, _ = m.q_shape
    if x.size % (heads * sq * m.seq_k) or x.shape[-1] != m.seq_k:
        return None
    return x.reshape(-1, heads, sq, m.seq_k)


def _values(x: np.ndarray, b: int, heads: int, sk: int) -> np.ndarray | None:
    """V as [B, H, Sk, Dv] (grouped K/V heads repeated to the query heads), or None."""
    if x.ndim != 4 or x.shape[0] != b or x.shape[2] != sk or heads % x.shape[1]:
        return None
    return np.repeat(x, heads // x.shape[1], axis=1)


def _row_weights(calib: CalibrationData, batch: dict[str, np.ndarray], b: int, sq: int) -> np.ndarray:
    """float [B, Sq]: 1 for real query rows, 0 for padding (when the data names a row mask)."""
    if calib.row_mask is not None:
        mask = np.asarray(batch.get(calib.row_mask))
        if mask.shape == (b, sq):
            return (mask != 0).astype(np.float64)
    return np.ones((b, sq))


class _Accumulator:
    def __init__(self, m: AttentionMatch, block: int, causal: bool) -> None:
        self.block, self.causal = block, causal
        self.nk = -(-m.seq_k // block)
        self.layouts = candidates(self.nk, causal, block)
        self.allowed = np.stack([allowed_blocks(w, s, causal, block, self.nk) for w, s in self.layouts])
        self.mass = self.err = self.norm = None
        self.rows = np.zeros(self.nk)

    def add(self, p: np.ndarray, v: np.ndarray, w: np.ndarray) -> None:
        b, heads, sq, sk = p.shape
        blk, nk = self.block, self.nk
        pad = nk * blk - sk
        pp = np.pad(p, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(b, heads, sq, nk, blk)
        vv = np.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, heads, nk, blk, v.shape[-1])
        y = np.einsum("bhiks,bhksd->bhikd", pp, vv, optimize=True)  # per key block: sum P V
        mass = pp.sum(-1)  # [B, H, Sq, nk]
        dense = y.sum(3)  # [B, H, Sq, D]
        qblock = np.clip((np.arange(sq) + sk - sq) // blk, 0, nk - 1)
        allowed = self.allowed.astype(p.dtype)  # [C, nk(query), nk(key)]
        err = np.zeros((len(self.layouts), heads))
        kept = np.zeros((len(self.layouts), heads))
        # Rows of one query block share every candidate's allowed key blocks: one GEMM per
        # query block gives all candidates' renormalised outputs at once.
        for qb in np.unique(qblock):
            rows = np.flatnonzero(qblock == qb)
            a = allowed[:, qb, :]  # [C, nk]
            yq = y[:, :, rows]  # [B, H, R, nk, D]
            num = np.einsum("ck,bhrkd->cbhrd", a, yq, optimize=True)
            km = np.einsum("ck,bhrk->cbhr", a, mass[:, :, rows], optimize=True)
            out = num / np.maximum(km, 1e-30)[..., None]
            wr = w[:, rows][None, :, None, :]  # [1, B, 1, R]
            sq_err = ((out - dense[None, :, :, rows]) ** 2).sum(-1)  # [C, B, H, R]
            err += (sq_err * wr).sum((1, 3), dtype=np.float64)
            kept += (km * wr).sum((1, 3), dtype=np.float64)
        norm = ((dense.astype(np.float64) ** 2).sum(-1) * w[:, None]).sum((0, 2))  # [H]
        self.rows += np.bincount(qblock, weights=w.sum(0), minlength=nk)
        if self.err is None:
            self.err, self.norm, self.mass = err, norm, kept
        else:
            self.err, self.norm, self.mass = self.err + err, self.norm + norm, self.mass + kept

    def profile(self, name: str) -> HeadProfile:
        present = self.rows > 0
        kept = np.array([int((a & present[:, None]).sum()) for a in self.allowed])
        total_rows = max(float(self.rows.sum()), 1.0)
        return HeadProfile(name, self.block, self.causal, self.layouts, (self.mass / total_rows).T,
                           (self.err / np.maximum(self.norm, 1e-30)[None]).T, kept)


def profile_heads(
    model: ir.Model, matches: list[AttentionMatch], calib: CalibrationData, block: int,
    causal: dict[str, bool], *, threads: int = 2,
) -> tuple[dict[str, HeadProfile], dict[str, str]]:
    """Profiles of `matches` over the calibration batches (one run of the model computing
    every block's Softmax output and V), and per unprofiled block the reason."""
    wanted = {m.name: (m.softmax.outputs[0].name, m.v.name) for m in matches}
    names = sorted({n for pair in wanted.values() for n in pair})
    runner = CalibrationRunner(model, calib, threads=threads)
    acc = {m.name: _Accumulator(m, block, causal[m.name]) for m in matches}
    skipped: dict[str, str] = {}
    done = 0
    for batch, outs in zip(runner.batches(), runner.values(names), strict=False):
        for m in matches:
            if m.name in skipped:
                continue
            p = _probabilities(outs[wanted[m.name][0]], m)
            v = None if p is None else _values(outs[wanted[m.name][1]], p.shape[0], p.shape[1], p.shape[3])
            if p is None or v is None:
                skipped[m.name] = "softmax output or V is not [batch, heads, q, k] / [batch, heads, k, dim]"
                continue
            acc[m.name].add(p.astype(np.float32), v.astype(np.float32), _row_weights(calib, batch, p.shape[0], p.shape[2]))
        done += len(next(iter(batch.values())))
        log.info("attention profile: %d/%d calibration samples", min(done, calib.num_samples), calib.num_samples)
    profiles = {name: a.profile(name) for name, a in acc.items() if name not in skipped and a.err is not None}
    return profiles, skipped
