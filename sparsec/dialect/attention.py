"""`com.sparsec.SparseAttention`: scaled dot-product attention restricted to a block layout.

    Y[b, h] = softmax(scale * Q[b, h] @ K[b, g(h)]^T + bias, masked to the layout) @ V[b, g(h)]

Q is [B, Hq, Sq, D], K is [B, Hkv, Sk, D], V is [B, Hkv, Sk, Dv], Y is [B, Hq, Sq, Dv]; query
head h reads key/value head g(h) = h // (Hq / Hkv) (grouped-query attention). The optional
`bias` is additive and broadcasts to [B, Hq, Sq, Sk] (a padding mask, T5's position bias).

Positions are absolute: query row i sits at position p = i + Sk - Sq (the last queries align
with the last keys, as in a prefill with a cache). A key at position k is allowed for query
position p when (not causal or k <= p) and the block pair (p // block, k // block) is in the
layout of head h:
- `local_blocks[h] = W` (W >= 1, or -1 for every block): the W key blocks ending at the
  query's block (causal), or within distance W - 1 of it either side (non-causal);
- `sink_blocks[h] = S`: the first S key blocks (attention sinks / global tokens);
- or an explicit `block_mask` tensor [H or 1, query blocks, key blocks] instead of both;
- plus, dynamically, `topk_blocks[h] = T` more key blocks per query block, chosen at run time
  from the data (block top-k, as in Sparsifiner / SVG2 / Sparse Frontier): for batch b, head h
  and absolute query block qb, with q^ = the sum of this call's query rows in block qb and
  k^[kb] = the mean of the key rows in key block kb (of head g(h)), the T key blocks with the
  highest q^ . k^[kb] among those the static layout above leaves out (and causally allowed,
  kb <= qb) are added; ties go to the lower kb, fewer are added when fewer remain. Scale and
  bias play no part in the choice. The cost of the estimate is one pooled product per block pair.
  With `topk_score = 1` the score of kb is instead the pooled query's softmax mass on the block,
  log sum over its keys j of exp(scale * q~ . k_j), q~ the mean of the query rows in qb (one
  pooled query per query block against every key: 1 / block of the dense score cost); it sees
  a single heavy key ([SEP]-like tokens) that a block mean dilutes. Bias plays no part.
- `summary_blocks[h] = 1`: every key block the layout above (top-k included) leaves out for a
  query block, and that lies wholly before it when causal (kb < qb), still enters that block's
  softmax, as one virtual key: the mean of the block's key rows k~[kb], with the logit
  scale * q . k~[kb] + log(sum over the block's keys j of exp(bias[j])) (log n without a bias,
  n keys in the block, fewer in a partial last block; -inf when the bias masks them all) and
  the value the mean of the block's value rows (the left-out keys summarised by their centroid,
  as NSA's compressed branch; it costs one key per left-out block per row).
A list of one value applies to every head. A row with no allowed key (or whose allowed keys
the bias masks with -inf, e.g. a padding position whose own block is all padding) outputs
zeros, as FlashAttention-style kernels do; layouts from the pass always keep the query's own block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.dialect.schema import AttrSpec, OpSchema, register_op

OP_TYPE = "SparseAttention"
ALL_BLOCKS = -1


@dataclass(frozen=True)
class BlockLayout:
    """The layout attributes of one SparseAttention node, as numpy-friendly values."""

    block: int
    causal: bool
    local_blocks: tuple[int, ...] = (ALL_BLOCKS,)
    sink_blocks: tuple[int, ...] = (0,)
    block_mask: np.ndarray | None = None  # bool [H or 1, query blocks, key blocks]
    topk_blocks: tuple[int, ...] = (0,)  # per head: key blocks chosen at run time
    summary_blocks: tuple[int, ...] = (0,)  # per head: 1 = left-out blocks read as one mean key each
    topk_score: int = 0  # 0: pooled q-sum . k-mean; 1: pooled query's softmax mass per key block
    scale: float = 1.0  # the op's scale (topk_score 1 uses it)

    @classmethod
    def of(cls, node: ir.Node) -> BlockLayout:
        a = node.attributes
        mask = a.get("block_mask")
        local = a.get("local_blocks")
        sinks = a.get("sink_blocks")
        topk = a.get("topk_blocks")
        summary = a.get("summary_blocks")
        return cls(
            block=a["block"].as_int(),
            causal=bool(a["causal"].as_int()),
            local_blocks=tuple(local.as_ints()) if local is not None else (ALL_BLOCKS,),
            sink_blocks=tuple(sinks.as_ints()) if sinks is not None else (0,),
            block_mask=None if mask is None else mask.as_tensor().numpy().astype(bool),
            topk_blocks=tuple(topk.as_ints()) if topk is not None else (0,),
            summary_blocks=tuple(summary.as_ints()) if summary is not None else (0,),
            topk_score=a["topk_score"].as_int() if "topk_score" in a else 0,
            scale=a["scale"].as_float() if "scale" in a else 1.0,
        )

    @property
    def dynamic(self) -> bool:
        return any(t > 0 for t in self.topk_blocks)

    @property
    def summarised(self) -> bool:
        return any(s > 0 for s in self.summary_blocks)

    def topk(self, head: int) -> int:
        return self.topk_blocks[head if len(self.topk_blocks) > 1 else 0]

    def summary(self, head: int) -> bool:
        return self.summary_blocks[head if len(self.summary_blocks) > 1 else 0] > 0

    def heads(self) -> int:
        """Heads the layout names explicitly (1: the same layout for every head)."""
        if self.block_mask is not None:
            return max(int(self.block_mask.shape[0]), len(self.topk_blocks), len(self.summary_blocks))
        return max(len(self.local_blocks), len(self.sink_blocks), len(self.topk_blocks), len(self.summary_blocks))

    def block_allowed(self, head: int, q_blocks: int, k_blocks: int, offset_blocks: int = 0) -> np.ndarray:
        """bool [q_blocks, k_blocks]: which block pairs head `head` reads (query block i is at
        absolute block i + offset_blocks)."""
        if self.block_mask is not None:
            m = self.block_mask[head if self.block_mask.shape[0] > 1 else 0]
            out = m[offset_blocks:offset_blocks + q_blocks, :k_blocks].copy()
            if self.causal:
                out &= np.arange(k_blocks)[None, :] <= np.arange(q_blocks)[:, None] + offset_blocks
            return out
        w = self.local_blocks[head if len(self.local_blocks) > 1 else 0]
        s = self.sink_blocks[head if len(self.sink_blocks) > 1 else 0]
        qb = np.arange(q_blocks)[:, None] + offset_blocks
        kb = np.arange(k_blocks)[None, :]
        diff = qb - kb
        if w == ALL_BLOCKS:
            local = np.ones_like(diff, dtype=bool)
        else:
            local = diff < w if self.causal else np.abs(diff) < w
        out = local | (kb < s)
        if self.causal:
            out &= kb <= qb
        return out

    def density(self, heads: int, sq: int, sk: int) -> float:
        """Fraction of the (causal, if causal) block pairs the layout keeps, over all heads
        (top-k blocks count as kept: their number per query block does not depend on the data;
        a summary key costs 1 / block of a block pair: one key for each row of the query block)."""
        nk = -(-sk // self.block)
        q0 = (sk - sq) // self.block
        nq = (sk - 1) // self.block - q0 + 1
        kept = total = 0
        full = BlockLayout(self.block, self.causal).block_allowed(0, nq, nk, q0)
        for h in range(heads):
            static = self.block_allowed(h if self.heads() > 1 else 0, nq, nk, q0)
            lh = h if self.heads() > 1 else 0
            extra = np.minimum((full & ~static).sum(axis=1), self.topk(lh))
            kept += float(static.sum() + extra.sum())
            if self.summary(lh):
                before = np.arange(nk)[None, :] < np.arange(nq)[:, None] + q0 if self.causal else full
                left = np.maximum((full & before & ~static).sum(axis=1) - extra, 0)
                kept += float(left.sum()) / self.block
            total += int(full.sum())
        return kept / max(total, 1)

    def dynamic_blocks(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """bool [B, Hq, query blocks, key blocks]: the block pairs the op reads for these
        Q [B, Hq, Sq, D] and K [B, Hkv, Sk, D], static layout and run-time top-k together;
        query block i is absolute block (Sk - Sq) // block + i."""
        bsz, hq, sq, _ = q.shape
        sk = k.shape[2]
        q0 = (sk - sq) // self.block
        nq, nk = (sk - 1) // self.block - q0 + 1, -(-sk // self.block)
        scores = pooled_scores(q, k, self.block, self.topk_score, self.scale) if self.dynamic else None
        full = BlockLayout(self.block, self.causal).block_allowed(0, nq, nk, q0)
        out = np.zeros((bsz, hq, nq, nk), bool)
        for h in range(hq):
            lh = h if self.heads() > 1 else 0
            static = self.block_allowed(lh, nq, nk, q0)
            out[:, h] = static
            if scores is not None and self.topk(lh) > 0:
                out[:, h] |= select_topk(scores[:, h], full & ~static, self.topk(lh))
        return out

    def element_mask(self, head: int, sq: int, sk: int) -> np.ndarray:
        """bool [sq, sk]: which keys each query row of head `head` reads (the op's semantics)."""
        p = np.arange(sq)[:, None] + (sk - sq)
        k = np.arange(sk)[None, :]
        nb = -(-max(sk, 1) // self.block)
        blocks = self.block_allowed(head, nb, nb)
        pb = np.clip(p // self.block, 0, nb - 1)
        out = blocks[pb, k // self.block]
        if self.causal:
            out &= k <= p
        return out

    def element_masks(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """bool [B, Hq, Sq, Sk]: which keys each query row reads, top-k included (the op's
        semantics for these inputs)."""
        sq, sk = q.shape[2], k.shape[2]
        blocks = self.dynamic_blocks(q, k)
        pos = np.arange(sq) + sk - sq
        rows = blocks[:, :, pos // self.block - (sk - sq) // self.block]  # [B, Hq, Sq, nk]
        out = rows[..., np.arange(sk) // self.block]
        if self.causal:
            out &= np.arange(sk)[None, :] <= pos[:, None]
        return out


    def summary_masks(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """bool [B, Hq, Sq, key blocks]: which summary keys (block means) each query row reads."""
        sq, sk = q.shape[2], k.shape[2]
        nk = -(-sk // self.block)
        q0 = (sk - sq) // self.block
        blocks = self.dynamic_blocks(q, k)  # [B, Hq, nq, nk]
        qb = np.arange(blocks.shape[2])[:, None] + q0
        left = ~blocks
        if self.causal:
            left &= np.arange(nk)[None, :] < qb
        heads = np.array([self.summary(h if self.heads() > 1 else 0) for h in range(q.shape[1])])
        left &= heads[None, :, None, None]
        pos = np.arange(sq) + sk - sq
        return left[:, :, pos // self.block - q0]


def block_means(x: np.ndarray, block: int) -> np.ndarray:
    """float64 [B, H, blocks, D]: the mean of each block of rows of x [B, H, S, D] (a partial
    last block: the mean of the rows it has)."""
    bsz, heads, s, d = x.shape
    nk = -(-s // block)
    pad = np.zeros((bsz, heads, nk * block, d), np.float64)
    pad[:, :, :s] = x
    counts = np.minimum(block, s - np.arange(nk) * block).astype(np.float64)
    return pad.reshape(bsz, heads, nk, block, d).sum(axis=3) / counts[:, None]


def block_counts(s: int, block: int) -> np.ndarray:
    """int [blocks]: keys in each key block (the last may be partial)."""
    nk = -(-s // block)
    return np.minimum(block, s - np.arange(nk) * block)


def summary_bias(bias: np.ndarray | None, shape: tuple[int, ...], block: int) -> np.ndarray:
    """float64 [.., Sq, key blocks]: log of the sum of exp(bias) over each key block's keys
    (log n without a bias), the summary keys' bias term."""
    sk = shape[-1]
    if bias is None:
        return np.log(block_counts(sk, block).astype(np.float64))
    e = np.exp(np.broadcast_to(np.asarray(bias, np.float64), shape))
    nk = -(-sk // block)
    pad = np.zeros((*shape[:-1], nk * block))
    pad[..., :sk] = e
    with np.errstate(divide="ignore"):
        return np.log(pad.reshape(*shape[:-1], nk, block).sum(-1))


def numpy_sparse_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, layout: BlockLayout, scale: float,
                           bias: np.ndarray | None = None) -> np.ndarray:
    """float64 Y [B, Hq, Sq, Dv]: the op's semantics written out (top-k and summary keys
    included); rows with nothing allowed give zeros."""
    bsz, hq, sq, _ = q.shape
    rep = hq // k.shape[1]
    kk = np.repeat(k.astype(np.float64), rep, axis=1)
    vv = np.repeat(v.astype(np.float64), rep, axis=1)
    s = scale * q.astype(np.float64) @ kk.transpose(0, 1, 3, 2)
    if bias is not None:
        s = s + np.broadcast_to(bias, s.shape)
    s = np.where(layout.element_masks(q, k), s, -np.inf)
    values = vv
    if layout.summarised:
        kbar, vbar = block_means(kk, layout.block), block_means(vv, layout.block)
        virt = scale * q.astype(np.float64) @ kbar.transpose(0, 1, 3, 2) + summary_bias(bias, s.shape, layout.block)
        s = np.concatenate([s, np.where(layout.summary_masks(q, k), virt, -np.inf)], axis=-1)
        values = np.concatenate([vv, vbar], axis=2)
    top = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    total = p.sum(-1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), 0.0) @ values


def pooled_scores(q: np.ndarray, k: np.ndarray, block: int, score: int = 0, scale: float = 1.0) -> np.ndarray:
    """float64 [B, Hq, query blocks, key blocks]: the top-k estimate q^ . k^ (sum of the query
    rows of each absolute query block, mean of the key rows of each key block); score 1: the
    pooled query's softmax mass, log sum_j exp(scale q~ . k_j) over each block's keys (q~ the
    mean of the block's query rows)."""
    bsz, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    q0 = (sk - sq) // block
    nq, nk = (sk - 1) // block - q0 + 1, -(-sk // block)
    qsum = np.zeros((bsz, hq, nq, q.shape[3]), np.float64)
    np.add.at(qsum, (slice(None), slice(None), (np.arange(sq) + sk - sq) // block - q0), q.astype(np.float64))
    if score == 1:
        rows = np.bincount((np.arange(sq) + sk - sq) // block - q0, minlength=nq).astype(np.float64)
        x = scale * (qsum / rows[:, None]) @ np.repeat(k.astype(np.float64), hq // hkv, axis=1).transpose(0, 1, 3, 2)
        pad = np.full((*x.shape[:3], nk * block), -np.inf)
        pad[..., :sk] = x
        pad = pad.reshape(*x.shape[:3], nk, block)
        top = pad.max(-1)
        return top + np.log(np.exp(pad - top[..., None]).sum(-1))
    kpad = np.zeros((bsz, hkv, nk * block, k.shape[3]), np.float64)
    kpad[:, :, :sk] = k
    counts = np.minimum(block, sk - np.arange(nk) * block).astype(np.float64)
    kmean = kpad.reshape(bsz, hkv, nk, block, -1).sum(axis=3) / counts[:, None]
    return qsum @ np.repeat(kmean, hq // hkv, axis=1).transpose(0, 1, 3, 2)


def select_topk(scores: np.ndarray, candidates: np.ndarray, t: int) -> np.ndarray:
    """bool, the shape of `scores` [..., query blocks, key blocks]: per query block the `t`
    highest-scoring key blocks among `candidates` (broadcast), ties to the lower block."""
    masked = np.where(candidates, scores, -np.inf)
    order = np.argsort(-masked, axis=-1, kind="stable")[..., :t]  # stable: lower block first on ties
    keep = np.take_along_axis(masked, order, axis=-1) > -np.inf
    out = np.zeros(masked.shape, bool)
    np.put_along_axis(out, order, keep, axis=-1)
    return out


def _ints(node: ir.Node, name: str) -> list[int] | None:
    a = node.attributes.get(name)
    return None if a is None else list(a.as_ints())


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def _verify_sparse_attention(node: ir.Node) -> list[str]:
    problems: list[str] = []
    block = node.attributes["block"].as_int()
    causal = node.attributes["causal"].as_int()
    if block < 1:
        problems.append(f"block must be >= 1, got {block}")
    if causal not in (0, 1):
        problems.append(f"causal must be 0 or 1, got {causal}")
    local, sinks = _ints(node, "local_blocks"), _ints(node, "sink_blocks")
    topk = _ints(node, "topk_blocks")
    if topk is not None and (not topk or any(t < 0 for t in topk)):
        problems.append(f"topk_blocks must be >= 0, got {topk}")
    score = node.attributes.get("topk_score")
    if score is not None and score.as_int() not in (0, 1):
        problems.append(f"topk_score must be 0 (pooled mean) or 1 (pooled softmax mass), got {score.as_int()}")
    summary = _ints(node, "summary_blocks")
    if summary is not None and (not summary or any(x not in (0, 1) for x in summary)):
        problems.append(f"summary_blocks must be 0 or 1 per head, got {summary}")
    mask_attr = node.attributes.get("block_mask")
    if mask_attr is not None and (local is not None or sinks is not None):
        problems.append("give either block_mask or local_blocks/sink_blocks, not both")
    if mask_attr is None and local is None:
        problems.append("a layout needs local_blocks or block_mask")
    if local is not None and (not local or any(w < 1 and w != ALL_BLOCKS for w in local)):
        problems.append(f"local_blocks must be >= 1 (or {ALL_BLOCKS} for all), got {local}")
    if sinks is not None and (not sinks or any(s < 0 for s in sinks)):
        problems.append(f"sink_blocks must be >= 0, got {sinks}")
    layout_heads = {len(x) for x in (local, sinks, topk, summary) if x is not None}
    if mask_attr is not None:
        mask = mask_attr.as_tensor().numpy()
        if mask.ndim != 3:
            problems.append(f"block_mask must be [heads, query blocks, key blocks], has rank {mask.ndim}")
        else:
            layout_heads.add(mask.shape[0])
            if not np.isin(mask, (0, 1)).all():
                problems.append("block_mask must hold only 0 and 1")
    shapes = [_static(v) for v in node.inputs[:3]]
    q, k, v = shapes
    for name, s in zip(("query", "key", "value"), shapes, strict=True):
        if s is not None and len(s) != 4:
            problems.append(f"{name} must be 4-D [batch, heads, seq, dim], has shape {list(s)}")
    if problems:
        return problems
    if q is not None and k is not None:
        if q[3] != k[3]:
            problems.append(f"query dim {q[3]} differs from key dim {k[3]}")
        if k[1] < 1 or q[1] % k[1]:
            problems.append(f"query heads {q[1]} are not a multiple of key/value heads {k[1]}")
        heads = q[1]
        if any(n not in (1, heads) for n in layout_heads):
            problems.append(f"layout lists {sorted(layout_heads)} heads, the query has {heads}")
        if mask_attr is not None and mask_attr.as_tensor().numpy().ndim == 3:
            m = mask_attr.as_tensor().numpy()
            need = -(-k[2] // block)
            if m.shape[1] < need or m.shape[2] < need:
                problems.append(f"block_mask covers {m.shape[1]}x{m.shape[2]} blocks, key length {k[2]} needs {need}x{need}")
    if k is not None and v is not None and (k[0] != v[0] or k[1] != v[1] or k[2] != v[2]):
        problems.append(f"key shape {list(k)} and value shape {list(v)} disagree on batch, heads or length")
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if bias is not None and bias.shape is not None and len(bias.shape) > 4:
        problems.append(f"bias must broadcast to [batch, heads, q, k], has rank {len(bias.shape)}")
    return problems


SPARSE_ATTENTION = register_op(
    OpSchema(
        op_type=OP_TYPE,
        doc=__doc__ or "",
        inputs=("query", "key", "value", "bias"),
        outputs=("output",),
        attributes={
            "scale": AttrSpec(ir.AttributeType.FLOAT, doc="factor on Q @ K^T"),
            "block": AttrSpec(ir.AttributeType.INT, doc="block size (queries and keys)"),
            "causal": AttrSpec(ir.AttributeType.INT, doc="1: a query reads only keys at or before its position"),
            "local_blocks": AttrSpec(ir.AttributeType.INTS, required=False,
                                     doc="per head: local window in blocks (-1: all)"),
            "sink_blocks": AttrSpec(ir.AttributeType.INTS, required=False,
                                    doc="per head: leading key blocks every query reads"),
            "topk_blocks": AttrSpec(ir.AttributeType.INTS, required=False,
                                    doc="per head: key blocks picked at run time by pooled Q.K (0: none)"),
            "topk_score": AttrSpec(ir.AttributeType.INT, required=False,
                                   doc="top-k estimate: 0 pooled q-sum . k-mean (default), 1 pooled query softmax mass"),
            "summary_blocks": AttrSpec(ir.AttributeType.INTS, required=False,
                                       doc="per head: 1 = each left-out key block is read as one mean key"),
            "block_mask": AttrSpec(ir.AttributeType.TENSOR, required=False,
                                   doc="explicit layout, uint8 [heads or 1, query blocks, key blocks]"),
        },
        optional_inputs=1,
        verifier=_verify_sparse_attention,
    )
)
