"""SparseAttention: verifier checks and the reference lowering against a numpy reference."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from sparsec.dialect import DOMAIN, verify_node
from sparsec.dialect.attention import BlockLayout
from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes

F32 = ir.TensorType(ir.DataType.FLOAT)


def _value(name: str, shape: tuple[int, ...]) -> ir.Value:
    return ir.Value(name=name, shape=ir.Shape(shape), type=F32)


def attention_model(q_shape, kv_shape, bias_shape=None, **attrs) -> ir.Model:
    """A one-node model y = SparseAttention(q, k, v[, bias]) with the given attributes."""
    q, k, v = _value("q", q_shape), _value("k", kv_shape), _value("v", kv_shape)
    inputs = [q, k, v]
    if bias_shape is not None:
        inputs.append(_value("bias", bias_shape))
    attributes = []
    for name, val in attrs.items():
        if isinstance(val, float):
            attributes.append(ir.AttrFloat32(name, val))
        elif isinstance(val, np.ndarray):
            attributes.append(ir.AttrTensor(name, ir.tensor(val)))
        elif isinstance(val, (list, tuple)):
            attributes.append(ir.AttrInt64s(name, list(val)))
        else:
            attributes.append(ir.AttrInt64(name, val))
    node = ir.Node(DOMAIN, "SparseAttention", inputs, attributes=attributes, name="sa", num_outputs=1)
    node.outputs[0].name, node.outputs[0].type = "y", F32
    graph = ir.Graph(inputs, [node.outputs[0]], nodes=[node], opset_imports={"": 18, DOMAIN: 1})
    return ir.Model(graph, ir_version=9)


def numpy_attention(q, k, v, layout: BlockLayout, scale: float, bias=None) -> np.ndarray:
    """The op's semantics, written out in float64."""
    b, hq, sq, _ = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    out = np.zeros((b, hq, sq, v.shape[3]))
    masks = layout.element_masks(q, k)
    for i in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            s = scale * q[i, h].astype(np.float64) @ k[i, g].T.astype(np.float64)
            if bias is not None:
                s = s + np.broadcast_to(bias, (b, hq, sq, sk))[i, h]
            s = np.where(masks[i, h], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[i, h] = (p / p.sum(-1, keepdims=True)) @ v[i, g]
            assert masks[i, h].any(axis=-1).all()  # every row keeps a key in these cases
    return out


def run_reference(model: ir.Model, feeds: dict) -> np.ndarray:
    lower_to_reference(model)
    assert not any(n.domain == DOMAIN for n in model.graph)
    return ort.InferenceSession(model_bytes(model)).run(None, feeds)[0]


CASES = [
    # (q shape, kv shape, attributes, with bias)
    ((1, 4, 40, 8), (1, 2, 40, 8), {"block": 8, "causal": 1, "local_blocks": [1, 2, 3, -1], "sink_blocks": [1]}, False),
    ((2, 2, 33, 16), (2, 2, 33, 16), {"block": 8, "causal": 0, "local_blocks": [2], "sink_blocks": [0]}, True),
    ((1, 2, 8, 8), (1, 2, 24, 8), {"block": 4, "causal": 1, "local_blocks": [2], "sink_blocks": [1]}, False),
    ((1, 3, 16, 4), (1, 1, 16, 4), {"block": 4, "causal": 0,
                                    "block_mask": (np.random.default_rng(3).random((3, 4, 4)) < 0.5) | np.eye(4, dtype=bool)}, False),
    # block top-k: GQA with per-head k (0 = static only), partial last block
    ((1, 4, 37, 8), (1, 2, 37, 8), {"block": 4, "causal": 1, "local_blocks": [1], "sink_blocks": [1],
                                    "topk_blocks": [2, 0, 1, 3]}, False),
    # non-causal, with bias, one k for all heads
    ((2, 2, 33, 16), (2, 2, 33, 16), {"block": 8, "causal": 0, "local_blocks": [1], "sink_blocks": [0],
                                      "topk_blocks": [2]}, True),
    # a prefill after a cache: partial first query block
    ((1, 2, 10, 8), (1, 2, 26, 8), {"block": 4, "causal": 1, "local_blocks": [1], "sink_blocks": [0],
                                    "topk_blocks": [2]}, False),
    # top-k on top of an explicit block mask
    ((1, 3, 16, 4), (1, 1, 16, 4), {"block": 4, "causal": 0, "block_mask": np.eye(4, dtype=bool)[None].repeat(3, 0),
                                    "topk_blocks": [1]}, False),
]


@pytest.mark.parametrize(("q_shape", "kv_shape", "attrs", "with_bias"), CASES)
def test_reference_lowering_matches_numpy(q_shape, kv_shape, attrs, with_bias) -> None:
    rng = np.random.default_rng(0)
    attrs = dict(attrs)
    if "block_mask" in attrs:
        attrs["block_mask"] = attrs["block_mask"].astype(np.uint8)
    bias_shape = (q_shape[0], 1, q_shape[2], kv_shape[2]) if with_bias else None
    model = attention_model(q_shape, kv_shape, bias_shape, scale=0.3, **attrs)
    node = next(iter(model.graph))
    assert verify_node(node) == []
    layout = BlockLayout.of(node)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", q_shape), ("k", kv_shape), ("v", kv_shape))}
    if with_bias:
        feeds["bias"] = np.where(rng.random(bias_shape) < 0.2, -1e9, rng.standard_normal(bias_shape)).astype(np.float32)
    got = run_reference(model, feeds)
    want = numpy_attention(feeds["q"], feeds["k"], feeds["v"], layout, 0.3, feeds.get("bias"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_topk_picks_the_blocks_of_largest_pooled_score() -> None:
    # Key block 2 holds keys aligned with the queries, so every query block past it picks it.
    q = np.zeros((1, 1, 16, 2), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((1, 1, 16, 2), np.float32)
    k[0, 0, 8:12, 0] = 5.0
    k[0, 0, 4:8, 0] = -1.0
    layout = BlockLayout(block=4, causal=True, local_blocks=(1,), sink_blocks=(0,), topk_blocks=(1,))
    blocks = layout.dynamic_blocks(q, k)[0, 0]
    assert blocks[3].tolist() == [False, False, True, True]
    assert blocks[1].tolist() == [True, True, False, False]  # the only other causal block
    assert layout.density(1, 16, 16) == pytest.approx(7 / 10)
    # Top-k over the whole causal triangle is dense attention.
    wide = BlockLayout(block=4, causal=True, local_blocks=(1,), sink_blocks=(0,), topk_blocks=(8,))
    assert wide.element_masks(q, k)[0, 0].tolist() == BlockLayout(4, True).element_mask(0, 16, 16).tolist()


def test_dense_layout_is_full_attention() -> None:
    layout = BlockLayout(block=4, causal=False)
    assert layout.element_mask(0, 10, 10).all()
    assert BlockLayout(4, True).element_mask(0, 6, 6).sum() == 21  # lower triangle


@pytest.mark.parametrize(
    ("q_shape", "kv_shape", "attrs", "problem"),
    [
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 0, "causal": 0, "local_blocks": [1]}, "block must be >= 1"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 2, "local_blocks": [1]}, "causal must be 0 or 1"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0}, "needs local_blocks or block_mask"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [0]}, "local_blocks must be >= 1"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1], "sink_blocks": [-1]}, "sink_blocks"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1, 1, 1]}, "layout lists"),
        ((1, 4, 8, 8), (1, 3, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1]}, "not a multiple"),
        ((1, 4, 8, 8), (1, 2, 8, 4), {"block": 4, "causal": 0, "local_blocks": [1]}, "differs from key dim"),
        ((1, 4, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1]}, "must be 4-D"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1],
                                      "block_mask": np.ones((1, 2, 2), np.uint8)}, "either block_mask"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "block_mask": np.ones((1, 1, 1), np.uint8)}, "block_mask covers"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "block_mask": np.full((1, 2, 2), 3, np.uint8)}, "only 0 and 1"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1], "topk_blocks": [-1]}, "topk_blocks must be"),
        ((1, 4, 8, 8), (1, 2, 8, 8), {"block": 4, "causal": 0, "local_blocks": [1], "topk_blocks": [1, 2]}, "layout lists"),
    ],
)
def test_verifier_rejects(q_shape, kv_shape, attrs, problem) -> None:
    node = next(iter(attention_model(q_shape, kv_shape, scale=1.0, **attrs).graph))
    problems = verify_node(node)
    assert any(problem in p for p in problems), problems
