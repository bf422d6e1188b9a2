"""Per-head attention profiles on calibration data: what each candidate layout would cost.

The `auto` layouts (MoA-style) are chosen from these profiles. For every head and every
candidate layout (local window W blocks + S sink blocks, static; or a narrow static part + T
key blocks picked at run time by the op's pooled top-k, dynamic) the profile holds:
- the softmax mass the layout keeps (what the dense head spent on the blocks it keeps), and
- the relative output error of the head restricted to the layout (softmax renormalised
  over the kept keys, as the op computes it): sum ||O' - O||^2 / sum ||O||^2 over rows.
The error is what the allocator minimises: a diffuse head loses much mass to a narrow
window yet averages similar values, so mass alone overrates it. Both are read from each
block's own Softmax output and V, so every mask the export applies is already in them; the
dynamic candidates also read Q and K, to make exactly the op's run-time choice.
With `summary`, every candidate is profiled a second time with the op's summary keys (each
left-out key block read as its mean key and value, `summary_blocks`), from Q and K too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.calib.runner import CalibrationRunner
from sparsec.dialect.attention import (
    ALL_BLOCKS,
    BlockLayout,
    block_means,
    pooled_scores,
)
from sparsec.executor import Executor, LocalExecutor, Shared
from sparsec.executor.shipping import share_model, shared_model
from sparsec.passes.attention.match import AttentionMatch

log = logging.getLogger("sparsec.passes.attention")

SINK_CANDIDATES = (0, 1, 2)
# The static part of dynamic candidates: the query's own block (and its neighbour), a sink or not.
DYNAMIC_STATIC = ((1, 0), (1, 1), (2, 0), (2, 1))


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


def candidates(nk: int, causal: bool, block: int, topk: bool = True) -> list[tuple[int, int, int]]:
    """(local, sinks, topk) triples, dense first, without two static ones that keep the same
    blocks; dynamic ones (topk > 0) only where they leave blocks out."""
    out: list[tuple[int, int, int]] = [(ALL_BLOCKS, 0, 0)]
    seen = {allowed_blocks(ALL_BLOCKS, 0, causal, block, nk).tobytes()}
    for w in window_candidates(nk):
        for s in SINK_CANDIDATES:
            key = allowed_blocks(w, s, causal, block, nk).tobytes()
            if key not in seen:
                seen.add(key)
                out.append((w, s, 0))
    if topk:
        for w, s in DYNAMIC_STATIC:
            for t in window_candidates(nk):
                if w + s + t < nk:
                    out.append((w, s, t))
    return out


@dataclass(frozen=True)
class HeadProfile:
    """One attention block's profile over `layouts` (dense first)."""

    name: str
    block: int
    causal: bool
    layouts: list[tuple[int, int, int]]  # (local, sinks, topk) blocks
    captured: np.ndarray  # [H, C] fraction of the softmax mass kept
    error: np.ndarray  # [H, C] relative squared output error
    kept: np.ndarray  # [C] block pairs kept per head (over query blocks that hold rows; top-k counted;
    # a summary key counts 1 / block of a pair)
    summary: tuple[bool, ...] = ()  # [C] candidate reads the left-out blocks as summary keys (empty: none)

    def summarised(self, c: int) -> bool:
        return bool(self.summary) and self.summary[c]


def _probabilities(x: np.ndarray, m: AttentionMatch | _Block) -> np.ndarray | None:
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


@dataclass(frozen=True)
class _Contribution:
    err: np.ndarray  # [C, H]
    norm: np.ndarray  # [H]
    kept: np.ndarray  # [C, H]
    rows: np.ndarray  # [nk]


@dataclass(frozen=True)
class _Block:
    """What profiling needs of an `AttentionMatch` (picklable: no IR nodes), for executor tasks."""

    name: str
    softmax: str  # the Softmax output's value name
    v: str  # V's value name
    q: str  # Q's and K's value names (dynamic candidates); K = K.transpose(k_perm) when set
    k: str
    k_perm: tuple[int, ...] | None
    q_shape: tuple[int, ...]
    seq_k: int
    block: int
    causal: bool
    topk: bool = True
    summary: bool = False
    scale: float = 1.0
    topk_score: int = 0


class _Accumulator:
    def __init__(self, m: AttentionMatch | _Block, block: int, causal: bool, topk: bool = True,
                 summary: bool = False, scale: float = 1.0, topk_score: int = 0) -> None:
        self.block, self.causal, self.scale, self.topk_score = block, causal, scale, topk_score
        self.nk = -(-m.seq_k // block)
        base = candidates(self.nk, causal, block, topk)
        # Summary candidates: every non-dense candidate again, with summary keys (after the plain
        # ones, so a (local, sinks, topk) triple's first index is the plain candidate).
        extra = [c for c in base if c[0] != ALL_BLOCKS] if summary else []
        self.layouts = base + extra
        self.summary = np.array([False] * len(base) + [True] * len(extra))
        self.allowed = np.stack([allowed_blocks(w, s, causal, block, self.nk) for w, s, _ in self.layouts])
        full = allowed_blocks(ALL_BLOCKS, 0, causal, block, self.nk)
        idx = np.arange(self.nk)
        self.before = idx[None, :] < idx[:, None] if causal else np.ones((self.nk, self.nk), bool)
        # Blocks each candidate reads per query block: static ones, plus min(T, what is left),
        # plus 1 / block per summary key (one key for each row of the query block).
        counts = []
        for a, (_, _, t), summ in zip(self.allowed, self.layouts, self.summary, strict=True):
            extra_t = np.minimum(t, (full & ~a).sum(1))
            c = (a.sum(1) + extra_t).astype(np.float64)
            if summ:
                c += np.maximum((full & self.before & ~a).sum(1) - extra_t, 0) / block
            counts.append(c)
        self.counts = np.stack(counts)
        self.mass = self.err = self.norm = None
        self.rows = np.zeros(self.nk)

    def add(self, p: np.ndarray, v: np.ndarray, w: np.ndarray, q: np.ndarray | None = None,
            k: np.ndarray | None = None) -> None:
        self.fold(self.contribution(p, v, w, q, k))

    def _dynamic(self, q: np.ndarray | None, k: np.ndarray | None, sq: int, sk: int) -> np.ndarray | None:
        """bool [C, B, H, nk(query, absolute), nk(key)]: each candidate's blocks per batch row and
        head, the op's run-time top-k included (None: no dynamic candidate, or no Q/K)."""
        if q is None or k is None or not any(t for _, _, t in self.layouts):
            return None
        scores = pooled_scores(q, k, self.block, self.topk_score, self.scale)  # [B, H, nq (from q0), nk]
        q0 = (sk - sq) // self.block
        full = allowed_blocks(ALL_BLOCKS, 0, self.causal, self.block, self.nk)
        out = np.broadcast_to(self.allowed[:, None, None], (len(self.layouts), *scores.shape[:2], self.nk, self.nk)).copy()
        ranks: dict[tuple[int, int], np.ndarray] = {}
        for c, (w, s, t) in enumerate(self.layouts):
            if not t:
                continue
            if (w, s) not in ranks:  # one sort per static part; each T takes a prefix of it
                cand = (full & ~self.allowed[c])[q0:q0 + scores.shape[2]]
                masked = np.where(cand, scores, -np.inf)
                # The op's order (select_topk): highest first, ties to the lower block.
                rank = np.argsort(np.argsort(-masked, axis=-1, kind="stable"), axis=-1, kind="stable")
                ranks[(w, s)] = np.where(masked > -np.inf, rank, self.nk)
            out[c, :, :, q0:q0 + scores.shape[2]] |= ranks[(w, s)] < t
        return out

    def contribution(self, p: np.ndarray, v: np.ndarray, w: np.ndarray, q: np.ndarray | None = None,
                     k: np.ndarray | None = None) -> _Contribution:
        """One batch's (error, norm, kept mass, rows per query block): what `fold` adds up."""
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
        dynamic = self._dynamic(q, k, sq, sk)
        virt = self._summary_weights(p, q, k, v) if self.summary.any() and q is not None else None
        flags = self.summary.astype(p.dtype)[:, None]  # [C, 1]
        err = np.zeros((len(self.layouts), heads))
        kept = np.zeros((len(self.layouts), heads))
        # Rows of one query block share every candidate's allowed key blocks: one GEMM per
        # query block gives all candidates' renormalised outputs at once.
        for qb in np.unique(qblock):
            rows = np.flatnonzero(qblock == qb)
            yq = y[:, :, rows]  # [B, H, R, nk, D]
            if dynamic is None:
                a = allowed[:, qb, :]  # [C, nk]
                num = np.einsum("ck,bhrkd->cbhrd", a, yq, optimize=True)
                km = np.einsum("ck,bhrk->cbhr", a, mass[:, :, rows], optimize=True)
            else:
                ad = dynamic[:, :, :, qb, :].astype(p.dtype)  # [C, B, H, nk]
                num = np.einsum("cbhk,bhrkd->cbhrd", ad, yq, optimize=True)
                km = np.einsum("cbhk,bhrk->cbhr", ad, mass[:, :, rows], optimize=True)
            if virt is not None:  # summary keys: left-out blocks before the query block
                vw, vbar = virt[0][:, :, rows], virt[1]  # [B, H, R, nk], [B, H, nk, D]
                if dynamic is None:
                    left = (1.0 - a) * self.before[qb] * flags  # [C, nk]
                    num = num + np.einsum("ck,bhrk,bhkd->cbhrd", left, vw, vbar, optimize=True)
                    km = km + np.einsum("ck,bhrk->cbhr", left, vw, optimize=True)
                else:
                    left = (1.0 - ad) * self.before[qb] * flags[:, :, None, None]  # [C, B, H, nk]
                    num = num + np.einsum("cbhk,bhrk,bhkd->cbhrd", left, vw, vbar, optimize=True)
                    km = km + np.einsum("cbhk,bhrk->cbhr", left, vw, optimize=True)
            out = num / np.maximum(km, 1e-30)[..., None]
            wr = w[:, rows][None, :, None, :]  # [1, B, 1, R]
            sq_err = ((out - dense[None, :, :, rows]) ** 2).sum(-1)  # [C, B, H, R]
            err += (sq_err * wr).sum((1, 3), dtype=np.float64)
            kept += (km * wr).sum((1, 3), dtype=np.float64)
        norm = ((dense.astype(np.float64) ** 2).sum(-1) * w[:, None]).sum((0, 2))  # [H]
        rows_per_block = np.bincount(qblock, weights=w.sum(0), minlength=nk)
        return _Contribution(err, norm, kept, rows_per_block)

    def _summary_weights(self, p: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(weights [B, H, Sq, nk], mean values [B, H, nk, D]): each summary key's softmax weight
        on the dense row's scale, exp(scale q . k~ + log sum_j exp(bias_ij) - lse). The row's
        log-sum-exp is read off its largest probability (lse = s_ij - log p_ij) and exp(bias_ij)
        off every probability (p_ij exp(lse - s_ij)): whatever masks the export applied."""
        heads = p.shape[1]
        kk = np.repeat(k, heads // k.shape[1], axis=1).astype(np.float64)
        q64 = q.astype(np.float64)
        j = p.argmax(-1)  # [B, H, Sq]
        kj = np.take_along_axis(kk, j[..., None], axis=2)  # [B, H, Sq, D]
        pj = np.take_along_axis(p, j[..., None], axis=-1)[..., 0].astype(np.float64)
        lse = self.scale * (q64 * kj).sum(-1) - np.log(np.maximum(pj, 1e-30))
        s = (self.scale * q64) @ kk.transpose(0, 1, 3, 2)  # [B, H, Sq, Sk]
        ebias = p * np.exp(np.minimum(lse[..., None] - s, 80.0))
        sk, nk = k.shape[2], self.nk
        pad = np.zeros((*ebias.shape[:3], nk * self.block))
        pad[..., :sk] = ebias
        with np.errstate(divide="ignore"):
            mass = np.log(pad.reshape(*ebias.shape[:3], nk, self.block).sum(-1))  # log n without a bias
        kbar = block_means(kk, self.block)
        logits = self.scale * q64 @ kbar.transpose(0, 1, 3, 2) + mass
        vw = np.exp(np.minimum(logits - lse[..., None], 80.0)).astype(p.dtype)
        return vw, block_means(v, self.block).astype(p.dtype)

    def fold(self, c: _Contribution) -> None:
        """Add one batch's contribution (batches folded in calibration order: the same sums
        wherever each batch was computed)."""
        self.rows += c.rows
        if self.err is None:
            self.err, self.norm, self.mass = c.err, c.norm, c.kept
        else:
            self.err, self.norm, self.mass = self.err + c.err, self.norm + c.norm, self.mass + c.kept

    def profile(self, name: str) -> HeadProfile:
        present = self.rows > 0
        kept = np.array([float(c[present].sum()) for c in self.counts])
        total_rows = max(float(self.rows.sum()), 1.0)
        return HeadProfile(name, self.block, self.causal, self.layouts, (self.mass / total_rows).T,
                           (self.err / np.maximum(self.norm, 1e-30)[None]).T, kept,
                           tuple(bool(x) for x in self.summary) if self.summary.any() else ())


def profile_heads(
    model: ir.Model, matches: list[AttentionMatch], calib: CalibrationData, block: int,
    causal: dict[str, bool], *, threads: int = 2, executor: Executor | None = None, topk: bool = True,
    summary: dict[str, bool] | None = None, topk_score: int = 0,
) -> tuple[dict[str, HeadProfile], dict[str, str]]:
    """Profiles of `matches` over the calibration batches (one run of the model computing
    every block's Softmax output and V), and per unprofiled block the reason.

    `executor`: where the runs go; the calibration samples are cut into contiguous chunks of
    whole batches (one per worker of the executor; one in process), each task returns every
    batch's contribution, and they are folded here in calibration order: the same profiles
    on every executor. `topk`: also profile dynamic (run-time top-k) candidates, from Q and K;
    `summary`: per block, also every candidate with summary keys; `topk_score`: the op's top-k
    estimate the dynamic candidates use (0 pooled mean, 1 pooled softmax mass)."""
    executor = executor or LocalExecutor()
    blocks = [_Block(m.name, m.softmax.outputs[0].name, m.v.name, m.q.name, m.k.name,
                     tuple(m.k_perm) if m.k_perm is not None else None, tuple(m.q_shape), m.seq_k, block,
                     causal[m.name], topk, bool((summary or {}).get(m.name)), float(m.scale), topk_score)
              for m in matches]
    batch = model_batch_size(model) or calib.batch_size
    batches = -(-calib.num_samples // batch)
    per_chunk = -(-batches // max(1, min(executor.parallelism(), batches))) * batch
    chunks = [_slice(calib, a, min(a + per_chunk, calib.num_samples)) for a in range(0, calib.num_samples, per_chunk)]
    shared = share_model(executor, model)
    tasks = [_ProfileTask(shared, chunk, blocks, threads) for chunk in chunks]
    acc = {b.name: _Accumulator(b, block, b.causal, topk, b.summary, b.scale, b.topk_score) for b in blocks}
    skipped: dict[str, str] = {}
    done = 0
    for result in executor.map(_profile_chunk, tasks, desc="attention profile"):
        skipped.update({k: r for k, r in result.skipped.items() if k not in skipped})
        for samples, contributions in result.batches:
            for name, c in contributions.items():
                if name not in skipped:
                    acc[name].fold(c)
            done += samples
            log.info("attention profile: %d/%d calibration samples", min(done, calib.num_samples), calib.num_samples)
    profiles = {name: a.profile(name) for name, a in acc.items() if name not in skipped and a.err is not None}
    return profiles, skipped


def _slice(calib: CalibrationData, start: int, stop: int) -> CalibrationData:
    if (start, stop) == (0, calib.num_samples):
        return calib
    arrays = {k: v[start:stop] for k, v in calib.arrays.items()}
    return replace(calib, arrays=arrays, source=f"{calib.source}[{start}:{stop}]", _hash=[])


@dataclass(frozen=True)
class _ProfileTask:
    model: Shared
    calib: CalibrationData  # this task's samples (whole batches)
    blocks: list[_Block]
    threads: int


@dataclass(frozen=True)
class _ProfileResult:
    batches: list[tuple[int, dict[str, _Contribution]]]  # per batch: (samples, block -> contribution)
    skipped: dict[str, str]


def _profile_chunk(task: _ProfileTask) -> _ProfileResult:
    """Every batch of one chunk of calibration samples (an executor task)."""
    calib = task.calib
    names = sorted({n for b in task.blocks for n in (b.softmax, b.v, *((b.q, b.k) if b.topk or b.summary else ()))})
    runner = CalibrationRunner(shared_model(task.model), calib, threads=task.threads)
    accs = {b.name: _Accumulator(b, b.block, b.causal, b.topk, b.summary, b.scale, b.topk_score) for b in task.blocks}
    skipped: dict[str, str] = {}
    out: list[tuple[int, dict[str, _Contribution]]] = []
    for batch, outs in zip(runner.batches(), runner.values(names), strict=False):
        found: dict[str, _Contribution] = {}
        for b in task.blocks:
            if b.name in skipped:
                continue
            p = _probabilities(outs[b.softmax], b)
            v = None if p is None else _values(outs[b.v], p.shape[0], p.shape[1], p.shape[3])
            if p is None or v is None:
                skipped[b.name] = "softmax output or V is not [batch, heads, q, k] / [batch, heads, k, dim]"
                continue
            w = _row_weights(calib, batch, p.shape[0], p.shape[2])
            q = k = None
            if b.topk or b.summary:
                q, k = outs[b.q], outs[b.k]
                k = k.transpose(b.k_perm) if b.k_perm is not None else k
                if q.shape[:3] != p.shape[:3] or k.ndim != 4 or k.shape[2] != p.shape[3] or q.shape[1] % k.shape[1]:
                    skipped[b.name] = "Q or K is not [batch, heads, seq, dim]"
                    continue
            found[b.name] = accs[b.name].contribution(p.astype(np.float32), v.astype(np.float32), w, q, k)
        out.append((len(next(iter(batch.values()))), found))
    return _ProfileResult(out, skipped)
