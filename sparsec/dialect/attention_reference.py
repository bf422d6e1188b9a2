"""Reference lowering of `com.sparsec.SparseAttention` to standard ONNX (opset >= 13).

The layout becomes a boolean mask [H or 1, Sq, Sk] computed from the run-time sequence lengths
(Range, integer Div, comparisons; an explicit block mask is gathered by block index), the
scores are masked with Where(-inf) before a standard Softmax (rows left with no key
read as zeros, as in the kernels). Grouped K/V heads are repeated
with Unsqueeze/Expand/Reshape. Any ONNX runtime runs the result; ONNX Runtime folds the mask to
a constant when the shapes are static.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from sparsec.dialect.attention import ALL_BLOCKS, BlockLayout, _static
from sparsec.ir.rewrite import replace_value

# A window wider than any sequence: "every block".
_UNBOUNDED = np.int64(1 << 40)


class _Builder:
    """Inserts standard ONNX nodes before `anchor`, with unique names under `prefix`."""

    def __init__(self, anchor: ir.Node, prefix: str) -> None:
        self.anchor, self.prefix, self.count = anchor, prefix, 0

    def const(self, array: np.ndarray, tag: str) -> ir.Value:
        self.count += 1
        name = f"{self.prefix}/{tag}_{self.count}"
        tensor = ir.tensor(np.asarray(array), name=name)
        value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(tensor.shape),
                         type=ir.TensorType(tensor.dtype))
        self.anchor.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs: list[ir.Value | None], **attrs: object) -> ir.Value:
        self.count += 1
        attributes = []
        for k, v in attrs.items():
            if isinstance(v, int):
                attributes.append(ir.AttrInt64(k, v))
            elif isinstance(v, (list, tuple)):
                attributes.append(ir.AttrInt64s(k, list(v)))
            else:
                raise TypeError(k)
        node = ir.Node("", op_type, inputs, attributes=attributes,
                       name=f"{self.prefix}/{op_type}_{self.count}", num_outputs=1)
        node.outputs[0].name = node.name
        self.anchor.graph.insert_before(self.anchor, node)
        return node.outputs[0]


def _repeat_kv(b: _Builder, kv: ir.Value, q: ir.Value) -> ir.Value:
    """K or V [B, Hkv, S, D] repeated to the query's heads [B, Hq, S, D]."""
    qs, ks = _static(q), _static(kv)
    if qs is not None and ks is not None and qs[1] == ks[1]:
        return kv
    shape_kv = b.op("Shape", [kv])
    shape_q = b.op("Shape", [q])
    hq = b.op("Slice", [shape_q, b.const(np.array([1]), "i"), b.const(np.array([2]), "i")])
    hkv = b.op("Slice", [shape_kv, b.const(np.array([1]), "i"), b.const(np.array([2]), "i")])
    lead = b.op("Slice", [shape_kv, b.const(np.array([0]), "i"), b.const(np.array([2]), "i")])
    tail = b.op("Slice", [shape_kv, b.const(np.array([2]), "i"), b.const(np.array([4]), "i")])
    batch = b.op("Slice", [shape_kv, b.const(np.array([0]), "i"), b.const(np.array([1]), "i")])
    groups = b.op("Div", [hq, hkv])
    expanded = b.op("Expand", [b.op("Unsqueeze", [kv, b.const(np.array([2]), "axes")]),
                               b.op("Concat", [lead, groups, tail], axis=0)])
    return b.op("Reshape", [expanded, b.op("Concat", [batch, hq, tail], axis=0)])


def _static_blocks(b: _Builder, layout: BlockLayout, qb: ir.Value, kb: ir.Value) -> ir.Value:
    """bool [H or 1, len(qb), len(kb)]: the static layout's rule for absolute query blocks `qb`
    and key blocks `kb` (1-D int64; one entry per row/key, or per block)."""
    if layout.block_mask is not None:
        mask = b.const(layout.block_mask.astype(bool), "block_mask")
        rows = b.op("Gather", [mask, qb], axis=1)  # [H, len(qb), key blocks]
        return b.op("Gather", [rows, kb], axis=2)
    heads = max(len(layout.local_blocks), len(layout.sink_blocks))
    w = np.broadcast_to(np.array(layout.local_blocks, np.int64), (heads,)).copy()
    w[w == ALL_BLOCKS] = _UNBOUNDED
    s = np.broadcast_to(np.array(layout.sink_blocks, np.int64), (heads,)).copy()
    qcol = b.op("Unsqueeze", [qb, b.const(np.array([1]), "axes")])  # [n, 1]
    krow = b.op("Unsqueeze", [kb, b.const(np.array([0]), "axes")])  # [1, m]
    diff = b.op("Sub", [qcol, krow])
    if not layout.causal:
        diff = b.op("Abs", [diff])
    local = b.op("Less", [diff, b.const(w.reshape(-1, 1, 1), "local_blocks")])  # [H, n, m]
    sink = b.op("Less", [krow, b.const(s.reshape(-1, 1, 1), "sink_blocks")])  # [H, 1, m]
    return b.op("Or", [local, sink])


def _pooled_scores(b: _Builder, q: ir.Value, k: ir.Value, qmem: ir.Value, kmem: ir.Value, scale: float) -> ir.Value:
    """[B, Hq, nq, nk]: the op's run-time estimate, sum of each query block's rows . mean of
    each key block's rows (`scale` plays no part in the choice)."""
    del scale
    axes1 = b.const(np.array([1]), "axes")
    qsum = b.op("MatMul", [qmem, q])  # [B, Hq, nq, D]
    kmean = b.op("MatMul", [b.op("Div", [kmem, b.op("ReduceSum", [kmem, axes1], keepdims=1)]), k])
    kmean = _repeat_kv(b, kmean, q)  # [B, Hq, nk, D]
    return b.op("MatMul", [qsum, b.op("Transpose", [kmean], perm=[0, 1, 3, 2])])


def _softmax_scores(b: _Builder, q: ir.Value, k: ir.Value, qmem: ir.Value, nk: ir.Value, block: int,
                    scale: float) -> ir.Value:
    """[B, Hq, nq, nk]: topk_score 1, log sum_j exp(scale q~ . k_j) over each key block (q~ the
    mean query row of each query block; the keys padded with -inf to whole blocks)."""
    axes1 = b.const(np.array([1]), "axes")
    qmean = b.op("MatMul", [b.op("Div", [qmem, b.op("ReduceSum", [qmem, axes1], keepdims=1)]), q])
    x = b.op("MatMul", [qmean, b.op("Transpose", [_repeat_kv(b, k, q)], perm=[0, 1, 3, 2])])
    x = b.op("Mul", [x, b.const(np.array(scale, np.float32), "scale")])  # [B, Hq, nq, Sk]
    nk1 = b.op("Unsqueeze", [nk, b.const(np.array([0]), "axes")])
    blk = b.const(np.array([block], np.int64), "block")
    width = b.op("Mul", [nk1, blk])
    extra = b.op("Sub", [width, b.op("Shape", [x], start=3, end=4)])
    zeros = b.const(np.zeros(7, np.int64), "pads")
    pads = b.op("Concat", [zeros, extra], axis=0)
    padded = b.op("Pad", [x, pads, b.const(np.array(-np.inf, np.float32), "neg_inf")])
    shape = b.op("Concat", [b.op("Shape", [x], start=0, end=3), nk1, blk], axis=0)
    tiles = b.op("Reshape", [padded, shape])  # [B, Hq, nq, nk, block]
    axes = b.const(np.array([4]), "axes")
    top, _ = _topk(b, tiles, b.const(np.array([1], np.int64), "one"))  # the block max (any opset >= 13)
    total = b.op("ReduceSum", [b.op("Exp", [b.op("Sub", [tiles, top])]), axes], keepdims=0)
    return b.op("Add", [b.op("Log", [total]), b.op("Squeeze", [top, axes])])


# How block pairs are scored for top-k: the op's definition. bench/attention_oracle.py swaps in
# the dense softmax mass (an oracle) to measure what any run-time rule could reach.
block_scores = _pooled_scores


def _topk_blocks(b: _Builder, layout: BlockLayout, q: ir.Value, k: ir.Value, qb_rel: ir.Value,
                 kb: ir.Value, sq: ir.Value, sk: ir.Value, scale: float) -> ir.Value:
    """bool [B, Hq, query blocks, key blocks]: static layout OR the run-time top-k blocks
    (see the op's doc). Pooling is a MatMul with a 0/1 block-membership matrix, so partial
    first/last blocks need no padding."""
    one = b.const(np.array(1, np.int64), "one")
    zero = b.const(np.array(0, np.int64), "zero")
    blk = b.const(np.array(layout.block, np.int64), "block")
    q0 = b.op("Div", [b.op("Sub", [sk, sq]), blk])
    last = b.op("Div", [b.op("Sub", [sk, one]), blk])
    nq = b.op("Add", [b.op("Sub", [last, q0]), one])
    nk = b.op("Add", [last, one])
    axes0, axes1 = b.const(np.array([0]), "axes"), b.const(np.array([1]), "axes")
    qidx, kidx = b.op("Range", [zero, nq, one]), b.op("Range", [zero, nk, one])

    def membership(index: ir.Value, of: ir.Value) -> ir.Value:  # float [blocks, rows]
        eq = b.op("Equal", [b.op("Unsqueeze", [index, axes1]), b.op("Unsqueeze", [of, axes0])])
        return b.op("Cast", [eq], to=int(ir.DataType.FLOAT))

    if layout.topk_score == 1:
        scores = _softmax_scores(b, q, k, membership(qidx, qb_rel), nk, layout.block, scale)
    else:
        scores = block_scores(b, q, k, membership(qidx, qb_rel), membership(kidx, kb), scale)  # [B, Hq, nq, nk]
    static = _static_blocks(b, layout, b.op("Add", [qidx, q0]), kidx)  # [H or 1, nq, nk]
    candidate = b.op("Not", [static])
    if layout.causal:
        causal = b.op("LessOrEqual", [b.op("Unsqueeze", [kidx, axes0]),
                                      b.op("Unsqueeze", [b.op("Add", [qidx, q0]), axes1])])
        candidate = b.op("And", [candidate, causal])
    neg_inf = b.const(np.array(-np.inf, np.float32), "neg_inf")
    masked = b.op("Where", [candidate, scores, neg_inf])
    t = np.array(layout.topk_blocks, np.int64)
    kmax = b.const(np.array([max(int(t.max()), 1)], np.int64), "kmax")
    kk = b.op("Min", [kmax, b.op("Unsqueeze", [nk, axes0])])
    vals, idx = _topk(b, masked, kk)
    rank = b.op("Range", [zero, b.op("Squeeze", [kk, axes0]), one])  # [kk]
    per_head = b.const(t.reshape(-1, 1, 1), "topk")  # [H or 1, 1, 1] against [B, Hq, nq, kk]
    chosen = b.op("And", [b.op("Less", [rank, per_head]), b.op("Greater", [vals, neg_inf])])  # [B, Hq, nq, kk]
    zeros = b.op("Mul", [scores, b.const(np.array(0.0, np.float32), "zero_f")])
    picked = b.op("ScatterElements", [zeros, idx, b.op("Cast", [chosen], to=int(ir.DataType.FLOAT))], axis=3)
    return b.op("Or", [b.op("Greater", [picked, b.const(np.array(0.5, np.float32), "half")]), static])


def _topk(b: _Builder, x: ir.Value, k: ir.Value) -> tuple[ir.Value, ir.Value]:
    """TopK along the last axis, largest first (ties: lower index first, as the op wants)."""
    b.count += 1
    node = ir.Node("", "TopK", [x, k], attributes=[ir.AttrInt64("axis", -1), ir.AttrInt64("largest", 1),
                                                    ir.AttrInt64("sorted", 1)],
                   name=f"{b.prefix}/TopK_{b.count}", num_outputs=2)
    node.outputs[0].name, node.outputs[1].name = f"{node.name}/values", f"{node.name}/indices"
    b.anchor.graph.insert_before(b.anchor, node)
    return node.outputs[0], node.outputs[1]


def _layout_mask(b: _Builder, layout: BlockLayout, q: ir.Value, k: ir.Value, scale: float
                 ) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value, ir.Value]:
    """(allowed, rows, qb, kidx, kb): allowed is bool [H or 1, Sq, Sk] (static layout) or
    [B, Hq, Sq, Sk] (with top-k), the op's allowed (query, key) pairs; rows the same per key
    block ([.., Sq, key blocks]), qb the absolute query block of each row, kidx 0..blocks-1,
    kb the block of each key."""
    one = b.const(np.array(1, np.int64), "one")
    zero = b.const(np.array(0, np.int64), "zero")
    axes0 = b.const(np.array([0]), "axes")
    sq = b.op("Squeeze", [b.op("Shape", [q], start=2, end=3), axes0])
    sk = b.op("Squeeze", [b.op("Shape", [k], start=2, end=3), axes0])
    qpos = b.op("Add", [b.op("Range", [zero, sq, one]), b.op("Sub", [sk, sq])])  # absolute positions
    kpos = b.op("Range", [zero, sk, one])
    blk = b.const(np.array(layout.block, np.int64), "block")
    qb = b.op("Div", [qpos, blk])
    kb = b.op("Div", [kpos, blk])
    kidx = b.op("Range", [zero, b.op("Add", [b.op("Div", [b.op("Sub", [sk, one]), blk]), one]), one])
    if layout.dynamic:
        qb_rel = b.op("Sub", [qb, b.op("Div", [b.op("Sub", [sk, sq]), blk])])
        blocks = _topk_blocks(b, layout, q, k, qb_rel, kb, sq, sk, scale)
        rows = b.op("Gather", [blocks, qb_rel], axis=2)  # [B, Hq, Sq, nk]
        allowed = b.op("Gather", [rows, kb], axis=3)
    else:
        rows = _static_blocks(b, layout, qb, kidx)  # [H, Sq, nk]
        allowed = b.op("Gather", [rows, kb], axis=2)
    if layout.causal:
        pcol = b.op("Unsqueeze", [qpos, b.const(np.array([1]), "axes")])
        krow_pos = b.op("Unsqueeze", [kpos, axes0])
        allowed = b.op("And", [allowed, b.op("LessOrEqual", [krow_pos, pcol])])
    return allowed, rows, qb, kidx, kb


def _summary(b: _Builder, layout: BlockLayout, q: ir.Value, k: ir.Value, v: ir.Value, rows: ir.Value,
             qb: ir.Value, kidx: ir.Value, kb: ir.Value, scale: float, bias: ir.Value | None, scores: ir.Value
             ) -> tuple[ir.Value, ir.Value]:
    """(logits [B, Hq, Sq, nk] with -inf where a row reads no summary key, block mean values
    [B, Hq, nk, Dv]): the op's summary keys, one per left-out key block."""
    axes0, axes1 = b.const(np.array([0]), "axes"), b.const(np.array([1]), "axes")
    member = b.op("Cast", [b.op("Equal", [b.op("Unsqueeze", [kidx, axes1]), b.op("Unsqueeze", [kb, axes0])])],
                  to=int(ir.DataType.FLOAT))  # [nk, Sk]
    counts = b.op("ReduceSum", [member, axes1], keepdims=1)  # [nk, 1]
    mean = b.op("Div", [member, counts])
    kbar = _repeat_kv(b, b.op("MatMul", [mean, k]), q)  # [B, Hq, nk, D]
    vbar = _repeat_kv(b, b.op("MatMul", [mean, v]), q)
    logits = b.op("MatMul", [q, b.op("Transpose", [kbar], perm=[0, 1, 3, 2])])
    if scale != 1.0:
        logits = b.op("Mul", [logits, b.const(np.array(scale, np.float32), "scale")])
    if bias is None:
        logits = b.op("Add", [logits, b.op("Log", [b.op("Transpose", [counts], perm=[1, 0])])])
    else:  # log sum_j exp(bias) over each block's keys: exp(bias) @ membership^T
        full = b.op("Expand", [bias, b.op("Shape", [scores])])  # [B, Hq, Sq, Sk]
        blocks = b.op("MatMul", [b.op("Exp", [full]), b.op("Transpose", [member], perm=[1, 0])])
        logits = b.op("Add", [logits, b.op("Log", [blocks])])
    left = b.op("Not", [rows])
    if layout.causal:  # only blocks wholly before the query's block
        left = b.op("And", [left, b.op("Less", [b.op("Unsqueeze", [kidx, axes0]), b.op("Unsqueeze", [qb, axes1])])])
    heads = np.array([layout.summary(h) for h in range(layout.heads())], bool)
    left = b.op("And", [left, b.const(heads.reshape(-1, 1, 1), "summary_heads")])
    return b.op("Where", [left, logits, b.const(np.array(-np.inf, np.float32), "neg_inf")]), vbar


def lower_sparse_attention(node: ir.Node) -> None:
    """Replace one SparseAttention node by standard ONNX with the same outputs."""
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    layout = BlockLayout.of(node)
    scale = node.attributes["scale"].as_float()
    b = _Builder(node, node.name or "sparse_attention")
    kx, vx = _repeat_kv(b, k, q), _repeat_kv(b, v, q)
    scores = b.op("MatMul", [q, b.op("Transpose", [kx], perm=[0, 1, 3, 2])])
    if scale != 1.0:
        scores = b.op("Mul", [scores, b.const(np.array(scale, np.float32), "scale")])
    if bias is not None:
        scores = b.op("Add", [scores, bias])
    allowed, rows, qb, kidx, kb = _layout_mask(b, layout, q, k, scale)
    if not layout.dynamic:
        allowed = b.op("Unsqueeze", [allowed, b.const(np.array([0]), "axes")])
    masked = b.op("Where", [allowed, scores, b.const(np.array(-np.inf, np.float32), "neg_inf")])
    if layout.summarised:
        virt, vbar = _summary(b, layout, q, k, v, rows, qb, kidx, kb, scale, bias, scores)
        masked = b.op("Concat", [masked, virt], axis=-1)
    probs = b.op("Softmax", [masked], axis=-1)
    # A row whose allowed keys are all masked (-inf bias) is 0/0: zeros, as the kernels give.
    probs = b.op("Where", [b.op("IsNaN", [probs]), b.const(np.array(0.0, np.float32), "zero_prob"), probs])
    if layout.summarised:
        axes = b.const(np.array([3]), "axes")
        sk = b.op("Shape", [k], start=2, end=3)
        big = b.const(np.array([1 << 40]), "end")
        real = b.op("Slice", [probs, b.const(np.array([0]), "start"), sk, axes])
        summary = b.op("Slice", [probs, sk, big, axes])
        out = b.op("Add", [b.op("MatMul", [real, vx]), b.op("MatMul", [summary, vbar])])
    else:
        out = b.op("MatMul", [probs, vx])
    replace_value(node.outputs[0], out, drop=node)
