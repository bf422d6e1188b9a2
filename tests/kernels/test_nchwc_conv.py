"""NCHWc sparse convolution (kernels/src/nchwc_conv_*.c): the kernel and its ONNX Runtime op vs a
float64 torch convolution; malformed packed weights refused at session creation."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsec import kernels as sk
from sparsec.kernels.errors import PackedFormatError

pytestmark = pytest.mark.skipif(not sk.kernels_available() or "avx512" not in sk.available_isas(),
                                reason="the NCHWc conv kernel needs the built kernels and AVX-512")

# (batch, cin, cout, h, w, k, stride, pads (t, l, b, r), dilation): output widths from 1 to 30 run
# every tile path (rows of 20 and more: 12-wide interior, 4-wide, masked 2/3/4 at borders, single
# positions; narrower K = 8 outputs: the flattened plane in tiles of 12 (14x14), 10 (13x13, 5x6),
# 8 (4x4) and 7 (7x7, 5x5), taps outside the input for every position of a tile (3x1));
# channels not multiples of 16; strides 1-3; asymmetric padding; dilation 2.
SHAPES = [
    (1, 64, 64, 14, 14, 3, 1, (1, 1, 1, 1), 1),
    (2, 32, 48, 7, 7, 3, 1, (1, 1, 1, 1), 1),
    (1, 48, 40, 28, 30, 1, 1, (0, 0, 0, 0), 1),
    (1, 40, 33, 15, 17, 3, 2, (1, 1, 1, 1), 1),
    (1, 24, 16, 9, 9, 5, 2, (2, 2, 2, 2), 1),
    (1, 16, 16, 11, 10, 3, 3, (0, 2, 1, 0), 1),
    (1, 16, 32, 13, 13, 3, 1, (2, 2, 2, 2), 2),
    (1, 20, 20, 5, 6, 3, 1, (1, 1, 1, 1), 1),
    (1, 16, 16, 3, 1, 3, 1, (1, 1, 1, 1), 1),
    (1, 128, 32, 7, 7, 1, 2, (0, 0, 0, 0), 1),
    (1, 32, 32, 4, 4, 3, 1, (1, 1, 1, 1), 1),
]


def prune(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M along input channels per (output channel, tap), as nm-sparsity prunes Conv weights."""
    co, ci, kh, kw = w.shape
    cpad = -(-ci // m) * m
    full = np.zeros((co, cpad, kh, kw), np.float32)
    full[:, :ci] = w
    g = np.moveaxis(full, 1, -1).reshape(co, kh, kw, cpad // m, m)
    keep = np.argsort(-np.abs(g), -1)[..., :n]
    mask = np.zeros_like(g, bool)
    np.put_along_axis(mask, keep, True, -1)
    return np.moveaxis((g * mask).reshape(co, kh, kw, cpad), -1, 1)[:, :ci].copy()


def reference(x, w, bias, stride, pads, dil, sum_, act):
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = torch.nn.functional.conv2d(torch.from_numpy(xp), torch.from_numpy(w).double(), torch.from_numpy(bias).double(),
                                   stride=stride, dilation=dil).numpy()
    if sum_ is not None:
        y = y + sum_
    return np.maximum(y, 0) if act == "relu" else np.clip(y, -1.0, 2.0) if act == "clip" else y


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])))
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "u", "u90"])
def test_kernel_matches_a_float64_convolution(shape, pattern):
    from sparsec.kernels.nchwc_conv import nchwc_conv
    from sparsec.kernels.packing_nchwc import from_nchwc, pack_nchwc, to_nchwc

    b, ci, co, h, w_, k, s, pads, dil = shape
    rng = np.random.default_rng(hash((shape, pattern)) % 2**32)
    w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
    if pattern.startswith("u"):
        w[rng.random(w.shape) < (0.9 if pattern == "u90" else 0.7)] = 0.0
    else:
        n, m = map(int, pattern.split(":"))
        w = prune(w, n, m)
    x = rng.standard_normal((b, ci, h, w_)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    packed = pack_nchwc(w)
    expect_k = {"2:4": 8, "1:4": 4, "4:8": 8}.get(pattern)
    if expect_k is not None:
        assert packed.k <= expect_k
    for act, with_sum in (("none", False), ("relu", True), ("clip", False)):
        ref_shape = reference(x, w, bias, s, pads, dil, None, "none").shape
        sum_ = rng.standard_normal(ref_shape).astype(np.float32) if with_sum else None
        ref = reference(x, w, bias, s, pads, dil, sum_, act)
        y = nchwc_conv(to_nchwc(x), packed, strides=(s, s), pads=pads, dilations=(dil, dil), bias=bias,
                       sum_=None if sum_ is None else to_nchwc(sum_), act=act, clip=(-1.0, 2.0), threads=2)
        got = from_nchwc(y, co)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))
        # padded output channels stay exactly zero (no bias there) unless an activation moves them
        if act == "none" and not with_sum and co % 16:
            assert not y.transpose(0, 1, 4, 2, 3).reshape(b, -1, *y.shape[2:4])[:, co:].any()


def test_packing_keeps_every_weight_once_and_a_block_as_many_pairs_as_its_fullest_lane():
    from sparsec.kernels.packing_nchwc import pack_nchwc

    rng = np.random.default_rng(0)
    w = prune(rng.standard_normal((32, 64, 3, 3)).astype(np.float32), 2, 4)
    p = pack_nchwc(w)
    assert p.k == 8 and p.idx.dtype == np.int32 and p.vals.dtype == np.float32 and p.offs.dtype == np.int32
    assert p.vals.size == w.size // 2 and p.kept_fraction == 0.5
    assert np.isclose(np.abs(p.vals).sum(), np.abs(w).sum(), rtol=1e-6)  # every kept weight, once
    assert ((p.idx >= 0) & (p.idx < 16)).all()
    # Unstructured, with an all-zero input block: blocks differ in length, the zero one has none.
    w = rng.standard_normal((20, 48, 1, 1)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    w[:, 16:32] = 0.0
    p = pack_nchwc(w)
    counts = np.diff(p.offs).reshape(p.ob, p.ib)
    assert (counts[:, 1] == 0).all() and counts.max() == p.k and len(set(counts[:, 0])) > 1
    kept = (np.pad(w[:, :, 0, 0], ((0, 12), (0, 0))) != 0).reshape(2, 16, 3, 16).sum(-1).max(1)
    np.testing.assert_array_equal(counts, kept)  # each block: its fullest lane
    # Unpacked again, the weight comes back exactly.
    back = np.zeros((p.ob * 16, p.ib * 16), np.float32)
    idx, vals = p.idx.reshape(-1, 16), p.vals.reshape(-1, 16)
    for blk in range(p.ob * p.ib):
        o, i = divmod(blk, p.ib)
        for j in range(p.offs[blk], p.offs[blk + 1]):
            back[o * 16 + np.arange(16), i * 16 + idx[j]] += vals[j]
    np.testing.assert_array_equal(back[:20, :48], w[:, :, 0, 0])


def _bias(co: int, n: int) -> np.ndarray:
    """A bias of n values, zero past the co real channels (as ORT pads NCHWc biases)."""
    b = np.zeros(n, np.float32)
    b[: min(co, n)] = np.linspace(-1, 1, min(co, n))
    return b


def _op_model(ci, co, h, k, idx, vals, bias_len, ho, offs=None, kmax=8):
    """The op alone; without offs, as written before offs existed (k pairs every block)."""
    extra = {} if offs is None else {"has_offs": 1}
    node = helper.make_node("SparseConvNchwc", ["x", "idx", "vals", "b", *([] if offs is None else ["", "offs"])],
                            ["y"], domain="com.sparsec.kernels", cout=co, cin=ci, kh=k, kw=k, k=kmax, stride_h=1,
                            stride_w=1, pad_t=k // 2, pad_l=k // 2, pad_b=k // 2, pad_r=k // 2, dil_h=1, dil_w=1,
                            act=1, has_bias=1, has_sum=0, **extra)
    inits = [numpy_helper.from_array(idx.reshape(-1), "idx"), numpy_helper.from_array(vals.reshape(-1), "vals"),
             numpy_helper.from_array(_bias(co, bias_len), "b")]
    if offs is not None:
        inits.append(numpy_helper.from_array(offs.reshape(-1), "offs"))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, -(-ci // 16) * 16, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, -(-co // 16) * 16, ho, ho])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.sparsec.kernels", 1)])


def _session(model):
    from sparsec.backends.ort.sparse_ops import make_session, session_options

    opts = session_options(2)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return make_session(model.SerializeToString(), 2, options=opts)


def test_ort_op_runs_in_nchwc_layout_like_the_kernel():
    from sparsec.kernels.nchwc_conv import nchwc_conv
    from sparsec.kernels.packing_nchwc import pack_nchwc, to_nchwc

    rng = np.random.default_rng(1)
    ci, co, h, k = 40, 24, 13, 3
    for pattern in ("2:4", "u85"):
        w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
        if pattern == "2:4":
            w = prune(w, 2, 4)
        else:
            w[rng.random(w.shape) < 0.85] = 0.0
        p = pack_nchwc(w)
        sess = _session(_op_model(ci, co, h, k, p.idx, p.vals, 32, h, p.offs, p.k))
        x = to_nchwc(rng.standard_normal((1, ci, h, h)).astype(np.float32))
        got = sess.run(None, {"x": x.reshape(1, 48, h, h)})[0]
        want = nchwc_conv(x, p, pads=(1, 1, 1, 1), bias=_bias(co, 32)[:co], act="relu", threads=2)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_ort_op_without_offs_reads_k_pairs_per_block():
    """Artifacts written before offs existed: k pairs every block (a 2:4 weight with full blocks)."""
    from sparsec.kernels.nchwc_conv import nchwc_conv
    from sparsec.kernels.packing_nchwc import pack_nchwc, to_nchwc

    rng = np.random.default_rng(3)
    ci, co, h, k = 32, 16, 9, 3
    p = pack_nchwc(prune(rng.standard_normal((co, ci, k, k)).astype(np.float32), 2, 4))
    assert p.pairs == p.k * p.ob * p.ib * k * k  # every block full: the same arrays as the old format
    sess = _session(_op_model(ci, co, h, k, p.idx, p.vals, 16, h))
    x = to_nchwc(rng.standard_normal((1, ci, h, h)).astype(np.float32))
    got = sess.run(None, {"x": x.reshape(1, ci, h, h)})[0]
    want = nchwc_conv(x, p, pads=(1, 1, 1, 1), bias=_bias(co, 16)[:co], act="relu", threads=2)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["index", "bias", "offs"])
def test_ort_op_refuses_malformed_packed_weights_at_session_creation(bad):
    from sparsec.kernels.packing_nchwc import pack_nchwc

    rng = np.random.default_rng(2)
    p = pack_nchwc(prune(rng.standard_normal((16, 32, 1, 1)).astype(np.float32), 2, 4))
    idx, offs = p.idx.copy(), p.offs.copy()
    if bad == "index":
        idx.reshape(-1)[5] = 16
    if bad == "offs":
        offs[1] = offs[2] + 1  # block 0 longer than k, block 1 negative
    match = {"index": "not a channel", "bias": "bias", "offs": "offs"}[bad]
    with pytest.raises(PackedFormatError, match=match):
        _session(_op_model(32, 16, 5, 1, idx, p.vals, 7 if bad == "bias" else 16, 5, offs, p.k))
