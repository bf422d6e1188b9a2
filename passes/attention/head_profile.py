"""Per-head attention profiles on calibration data: how much softmax mass falls in each block.

The `auto` layouts (MoA-style) are chosen from these profiles: a layout keeps a set of
(query block, key block) pairs, and the mass it captures is the softmax mass those pairs
held in the dense model. The mass is read from each block's own Softmax output, so every
mask the export applies (padding, causal, T5 position bias) is already in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import CalibrationRunner
from sparsec.passes.attention.match import AttentionMatch

log = logging.getLogger("sparsec.passes.attention")


@dataclass(frozen=True)
class HeadProfile:
    """One attention block's profile.

    `mass[h, qb, kb]`: softmax mass per query row of head h, summed over the keys of key
    block kb and over the (real) query rows whose absolute position lies in block qb;
    `rows[qb]`: how many query rows contributed to block qb. Blocks are absolute positions:
    query row i sits at i + Sk - Sq, as in SparseAttention.
    """

    name: str
    block: int
    mass: np.ndarray  # float64 [H, nk, nk]
    rows: np.ndarray  # float64 [nk]

    def captured(self, allowed: np.ndarray) -> np.ndarray:
        """float [H]: the fraction of each head's mass (mean over query rows) that a block
        layout keeps; `allowed` is bool [H or 1, nk, nk] over absolute blocks."""
        kept = (self.mass * allowed).sum(axis=(1, 2))
        return kept / max(float(self.rows.sum()), 1.0)


def _probabilities(x: np.ndarray, m: AttentionMatch) -> np.ndarray | None:
    """The Softmax output as [B, H, Sq, Sk], or None when its layout is not that."""
    _, heads, sq, _ = m.q_shape
    sk = m.seq_k
    per_sample = heads * sq * sk
    if x.size % per_sample or x.shape[-1] != sk:
        return None
    return x.reshape(-1, heads, sq, sk)


def _row_weights(calib: CalibrationData, batch: dict[str, np.ndarray], b: int, sq: int) -> np.ndarray:
    """float [B, Sq]: 1 for real query rows, 0 for padding (when the data names a row mask)."""
    if calib.row_mask is not None:
        mask = np.asarray(batch.get(calib.row_mask))
        if mask.shape == (b, sq):
            return (mask != 0).astype(np.float64)
    return np.ones((b, sq))


def profile_heads(
    model: ir.Model, matches: list[AttentionMatch], calib: CalibrationData, block: int, *, threads: int = 2
) -> tuple[dict[str, HeadProfile], dict[str, str]]:
    """Profiles of `matches` over the calibration batches (one run of the model computing
    every block's Softmax output), and per unprofiled block the reason."""
    names = {m.name: m.softmax.outputs[0].name for m in matches}
    runner = CalibrationRunner(model, calib, threads=threads)
    acc: dict[str, list[np.ndarray]] = {}
    skipped: dict[str, str] = {}
    batches = runner.batches()
    total = calib.num_samples
    done = 0
    for batch, outs in zip(batches, runner.values(list(names.values())), strict=False):
        for m in matches:
            if m.name in skipped:
                continue
            p = _probabilities(outs[names[m.name]], m)
            if p is None:
                skipped[m.name] = f"softmax output shape {list(outs[names[m.name]].shape)} is not [B, heads, q, k]"
                continue
            b, heads, sq, sk = p.shape
            nk = -(-sk // block)
            pad = nk * block - sk
            keys = np.pad(p, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(b, heads, sq, nk, block).sum(-1)
            w = _row_weights(calib, batch, b, sq)
            qblock = (np.arange(sq) + sk - sq) // block  # absolute block of each query row
            onehot = np.zeros((sq, nk))
            onehot[np.arange(sq), np.clip(qblock, 0, nk - 1)] = 1.0
            # mass[h, qb, kb] += sum_b sum_i w[b, i] * onehot[i, qb] * keys[b, h, i, kb]
            mass = np.einsum("bi,iq,bhik->hqk", w, onehot, keys.astype(np.float64), optimize=True)
            rows = (w.sum(0)[:, None] * onehot).sum(0)
            if m.name in acc:
                acc[m.name][0] += mass
                acc[m.name][1] += rows
            else:
                acc[m.name] = [mass, rows]
        done += len(next(iter(batch.values())))
        log.info("attention profile: %d/%d calibration samples", min(done, total), total)
    profiles = {name: HeadProfile(name, block, a[0], a[1]) for name, a in acc.items()}
    return profiles, skipped
