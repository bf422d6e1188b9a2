"""Find scaled dot-product attention in an exported graph.

Exporters decompose attention as

    Q' = Q [* c1]          K' = K^T [* c2]          (scale: on both sides, or pre-scaled Q)
    S  = MatMul(Q', K') [* c | / c]
    S  = S + bias | Where(mask, S, -big)            (padding / causal mask, T5 position bias)
    P  = Softmax(S, axis=-1) [-> Where(IsNaN(P), 0, P)]     (SDPA's NaN guard)
    Y  = MatMul(P, V)

with K^T spelled as Transpose(K, [0,1,3,2]) (legacy exporter) or Reshape(Transpose(Reshape(K)))
(dynamo), and grouped-query K/V repeated by Reshape(Expand(Unsqueeze(K))). The matcher follows
the onnxscript rewriter's pattern / check / rewrite split: `match_softmax` walks the pattern
from a Softmax anchor and checks it, returning an `AttentionMatch` or the reason it failed
(an `AttentionMiss`); `passes.attention.rewrite` turns a match into SparseAttention. Fused
attention ops (ONNX `Attention` from opset 23, com.microsoft MultiHeadAttention / Attention /
GroupQueryAttention) are recognised and reported as misses with their reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.ir.shapes import ShapeInfo

FUSED_OPS = {
    ("", "Attention"): "ONNX Attention (opset 23)",
    ("ai.onnx", "Attention"): "ONNX Attention (opset 23)",
    ("com.microsoft", "MultiHeadAttention"): "com.microsoft.MultiHeadAttention",
    ("com.microsoft", "Attention"): "com.microsoft.Attention",
    ("com.microsoft", "GroupQueryAttention"): "com.microsoft.GroupQueryAttention",
    ("com.microsoft", "SparseAttention"): "com.microsoft.SparseAttention",
}
# A masked score at or below this acts as -inf after softmax (exporters use finfo.min or -1e4..-1e9).
MASK_FILL_MAX = -1e4


@dataclass
class AttentionMatch:
    """One attention block, in the operands SparseAttention takes."""

    name: str
    softmax: ir.Node
    out: ir.Value  # the value the block's final MatMul produced
    q: ir.Value
    k: ir.Value  # [B, Hkv, Sk, D] (K itself, not K^T)
    k_perm: list[int] | None  # K = Transpose(k, k_perm) when set (the rewrite inserts it)
    v: ir.Value
    scale: float
    bias: ir.Value | None = None
    where_mask: tuple[ir.Node, int] | None = None  # (Where node, index of the scores input)
    q_shape: tuple[int, ...] = ()
    kv_heads: int = 0
    seq_k: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def heads(self) -> int:
        return self.q_shape[1]

    def summary(self) -> str:
        b, h, sq, d = self.q_shape
        mask = "bias" if self.bias is not None else "where-mask" if self.where_mask else "none"
        gqa = f" gqa {h}/{self.kv_heads}" if self.kv_heads != h else ""
        return f"heads {h} x {d}, q {sq}, k {self.seq_k}, scale {self.scale:.4g}, mask {mask}{gqa}"


@dataclass(frozen=True)
class AttentionMiss:
    name: str
    op: str
    reason: str


def _is_std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in ops


def _scalar(value: ir.Value | None) -> float | None:
    """The value as a Python float if it is a constant with one element."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if _is_std(producer, "Constant") and "value" in producer.attributes:
            tensor = producer.attributes["value"].as_tensor()
    if tensor is None:
        return None
    arr = tensor.numpy()
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _peel_scale(value: ir.Value) -> tuple[ir.Value, float]:
    """Strip scalar Mul/Div factors: (operand, accumulated factor)."""
    factor = 1.0
    while True:
        node = value.producer()
        if not _is_std(node, "Mul", "Div") or not _single_use(value):
            return value, factor
        if node.op_type == "Mul":
            c0, c1 = _scalar(node.inputs[0]), _scalar(node.inputs[1])
            if c1 is not None:
                value, factor = node.inputs[0], factor * c1
            elif c0 is not None:
                value, factor = node.inputs[1], factor * c0
            else:
                return value, factor
        else:
            c = _scalar(node.inputs[1])
            if c is None or c == 0.0:
                return value, factor
            value, factor = node.inputs[0], factor / c


def _perm(node: ir.Node) -> list[int] | None:
    a = node.attributes.get("perm")
    return None if a is None else list(a.as_ints())


def _untranspose_k(kt: ir.Value, shapes: ShapeInfo) -> tuple[ir.Value, list[int] | None]:
    """K [B, H, S, D] from K^T [B, H, D, S] as (source, perm): K = Transpose(source, perm), or
    K = source when perm is None. Recognised: a Transpose of any 4-D source (the legacy exporter
    fuses the head split into it, [0, 2, 3, 1]) and dynamo's Reshape(Transpose(Reshape(K,
    [B*H, S, D]), [0, 2, 1]), [B, H, D, S]), whose K may be the 5-D GQA repeat [B, Hkv, g, S, D].
    Anything else: (K^T, [0, 1, 3, 2])."""
    node = kt.producer()
    if _is_std(node, "Transpose") and _single_use(kt):
        p = _perm(node)
        if p is not None and len(p) == 4:
            k_perm = [p[0], p[1], p[3], p[2]]
            return node.inputs[0], None if k_perm == [0, 1, 2, 3] else k_perm
    if _is_std(node, "Reshape") and _single_use(kt):
        t = node.inputs[0].producer()
        if _is_std(t, "Transpose") and _perm(t) == [0, 2, 1] and _single_use(node.inputs[0]):
            r = t.inputs[0].producer()
            if _is_std(r, "Reshape") and _single_use(t.inputs[0]):
                k = r.inputs[0]
                ks, kts = shapes.shape(k), shapes.shape(kt)
                if ks is not None and kts is not None:
                    if len(ks) == 5:  # [B, Hkv, g, S, D] -> heads Hkv * g
                        ks = (ks[0], ks[1] * ks[2], ks[3], ks[4])
                    if len(ks) == 4 and kts == (ks[0], ks[1], ks[3], ks[2]):
                        return k, None
    return kt, [0, 1, 3, 2]


def _unrepeat_kv(value: ir.Value, shapes: ShapeInfo) -> ir.Value:
    """The un-repeated K/V [B, Hkv, S, D] behind a GQA repeat Reshape(Expand(Unsqueeze(x, 2)))
    (or the 5-D Expand itself), else the value itself."""
    e = value.producer()
    if _is_std(e, "Reshape") and _single_use(value):
        e = e.inputs[0].producer()
    if not _is_std(e, "Expand") or not _single_use(e.outputs[0]):
        return value
    u = e.inputs[0].producer()
    if not _is_std(u, "Unsqueeze", "Reshape"):
        return value
    base = u.inputs[0]
    bs, es, vs = shapes.shape(base), shapes.shape(e.outputs[0]), shapes.shape(value)
    if bs is None or es is None or vs is None or len(bs) != 4 or len(es) != 5:
        return value
    b, hkv, s, d = bs
    if es[:2] != (b, hkv) or es[3:] != (s, d) or vs not in ((b, hkv * es[2], s, d), es):
        return value
    if shapes.shape(e.inputs[0]) != (b, hkv, 1, s, d):
        return value
    return base


def _softmax_consumer(p: ir.Value) -> tuple[ir.Node, ir.Value] | str:
    """The MatMul(P, V) after the softmax, through SDPA's Where(IsNaN(P), 0, P) guard."""
    uses = p.uses()
    if p.is_graph_output():
        return "the softmax output is a graph output"
    isnan = [u for u, _ in uses if _is_std(u, "IsNaN")]
    where = [(u, i) for u, i in uses if _is_std(u, "Where")]
    if isnan and where and len(uses) == 2:
        w, index = where[0]
        if index != 2 or w.inputs[0] is not isnan[0].outputs[0] or _scalar(w.inputs[1]) != 0.0:
            return "softmax guard is not Where(IsNaN(P), 0, P)"
        p = w.outputs[0]
        uses = p.uses()
    if len(uses) != 1 or p.is_graph_output():
        return f"the attention probabilities have {len(uses)} users (expected one MatMul)"
    user, index = uses[0]
    if not _is_std(user, "MatMul") or index != 0:
        return f"the attention probabilities feed {user.op_type}, not MatMul(P, V)"
    return user, p


def match_softmax(softmax: ir.Node, shapes: ShapeInfo) -> AttentionMatch | AttentionMiss:
    """Check one Softmax anchor against the attention pattern."""
    name = softmax.name or softmax.outputs[0].name

    def miss(reason: str) -> AttentionMiss:
        return AttentionMiss(name, "Softmax", reason)

    axis = softmax.attributes.get("axis")
    rank_s = shapes.shape(softmax.inputs[0])
    if rank_s is None:
        return miss("scores have no static shape (give --dim for symbolic dims)")
    if axis is not None and axis.as_int() not in (-1, len(rank_s) - 1):
        return miss(f"softmax over axis {axis.as_int()}, not the key axis")
    consumer = _softmax_consumer(softmax.outputs[0])
    if isinstance(consumer, str):
        return miss(consumer)
    pv, _ = consumer
    # Walk back from the softmax input: mask, then scale, then MatMul(Q', K').
    scores = softmax.inputs[0]
    bias: ir.Value | None = None
    where_mask: tuple[ir.Node, int] | None = None
    node = scores.producer()
    if _is_std(node, "Add") and _single_use(scores):
        a, b = node.inputs
        pa, pb = a.producer(), b.producer()
        # The scores side leads to the QK MatMul (possibly through scale ops).
        if _is_std(_peel_scale(a)[0].producer(), "MatMul") and not (pb is not None and _is_std(_peel_scale(b)[0].producer(), "MatMul")):
            scores, bias = a, b
        elif _is_std(_peel_scale(b)[0].producer(), "MatMul"):
            scores, bias = b, a
        else:
            return miss("softmax input is Add of two values, neither from Q @ K^T")
        del pa
    elif _is_std(node, "Where") and _single_use(scores):
        for index, fill_index in ((1, 2), (2, 1)):
            fill = _scalar(node.inputs[fill_index])
            if fill is not None and fill <= MASK_FILL_MAX:
                where_mask = (node, index)
                scores = node.inputs[index]
                break
        else:
            return miss("softmax input is a Where without a large negative fill")
    qk_out, scale = _peel_scale(scores)
    qk = qk_out.producer()
    if not _is_std(qk, "MatMul"):
        return miss(f"softmax input comes from {qk.op_type if qk else 'a graph input'}, not MatMul(Q, K^T)")
    if not _single_use(qk_out):
        return miss("Q @ K^T has several users")
    q, sq_factor = _peel_scale(qk.inputs[0])
    kt, sk_factor = _peel_scale(qk.inputs[1])
    scale *= sq_factor * sk_factor
    qs, kts, vs0 = shapes.shape(q), shapes.shape(kt), shapes.shape(pv.inputs[1])
    if qs is None or kts is None or vs0 is None:
        return miss("Q, K or V has no static shape")
    if len(qs) != 4 or len(kts) != 4 or len(vs0) != 4:
        return miss(f"Q/K/V are not 4-D [batch, heads, seq, dim] (ranks {len(qs)}, {len(kts)}, {len(vs0)})")
    for value in (q, kt, pv.inputs[1]):
        if value.dtype not in (None, ir.DataType.FLOAT) or shapes.dtypes.get(value.name, 1) != 1:
            return miss("attention is not float32")
    k, k_perm = _untranspose_k(kt, shapes)
    v = pv.inputs[1]
    if k_perm is None:
        k_base, v_base = _unrepeat_kv(k, shapes), _unrepeat_kv(v, shapes)
        kb, vb = shapes.shape(k_base), shapes.shape(v_base)
        if kb is not None and vb is not None and len(kb) == 4 and kb[1] == vb[1]:
            k, v = k_base, v_base
    ks = shapes.shape(k)
    if len(ks) != 4:
        return miss("grouped K/V repeat of an unrecognised form")
    if k_perm is not None:
        ks = tuple(ks[i] for i in k_perm)
    seq_k, kv_heads = ks[2], ks[1]
    vs = shapes.shape(v)
    if qs[3] != ks[3]:
        return miss(f"query dim {qs[3]} differs from key dim")
    if qs[1] % kv_heads or vs[1] != kv_heads or vs[2] != seq_k or qs[0] != ks[0]:
        return miss(f"heads or lengths disagree: Q {list(qs)}, K {list(ks)}, V {list(vs)}")
    if bias is not None:
        bshape = shapes.shape(bias)
        if bshape is None or len(bshape) > 4:
            return miss("the mask/bias has no static shape of rank <= 4")
        try:
            np.broadcast_shapes(bshape, (qs[0], qs[1], qs[2], seq_k))
        except ValueError:
            return miss(f"bias shape {list(bshape)} does not broadcast to the scores")
    return AttentionMatch(
        name=name, softmax=softmax, out=pv.outputs[0], q=q, k=k, k_perm=k_perm, v=v,
        scale=scale, bias=bias, where_mask=where_mask, q_shape=qs, kv_heads=kv_heads, seq_k=seq_k,
    )


def find_attention(model: ir.Model, shapes: ShapeInfo) -> tuple[list[AttentionMatch], list[AttentionMiss]]:
    """Every attention block of the main graph, and every candidate it could not match."""
    matches: list[AttentionMatch] = []
    misses: list[AttentionMiss] = []
    for node in model.graph:
        fused = FUSED_OPS.get((node.domain, node.op_type))
        if fused is not None:
            misses.append(AttentionMiss(node.name or node.outputs[0].name, fused,
                                        "fused attention op: recognised, not rewritten (no layout support yet)"))
        elif _is_std(node, "Softmax"):
            found = match_softmax(node, shapes)
            (matches if isinstance(found, AttentionMatch) else misses).append(found)  # type: ignore[arg-type]
    return matches, misses
