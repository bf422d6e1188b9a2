"""Sparse convolution kernel (kernels/src/conv_*.c) vs a float64 torch convolution, every ISA path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec import kernels as sk
from sparsec.kernels.conv import conv2d
from sparsec.kernels.packing_conv import PackedConv, pack_conv

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels are not built")

# (batch, cin, cout, h, w, k, stride, pad): odd sizes, channels not multiples of 8/16, chunked
# input channels (cin > kc), 7x7 maps, one-row/one-column inputs, stride 2 on odd sizes.
SHAPES = [
    (1, 64, 48, 20, 21, 1, 1, 0),
    (2, 37, 19, 7, 9, 1, 1, 0),
    (1, 150, 33, 7, 7, 1, 1, 0),
    (1, 24, 40, 13, 11, 3, 1, 1),
    (1, 40, 33, 14, 15, 3, 2, 1),
    (1, 16, 8, 15, 14, 1, 2, 0),
    (2, 8, 6, 5, 3, 3, 2, 1),
    (1, 70, 10, 9, 9, 3, 1, 1),
    (1, 5, 7, 3, 3, 3, 1, 1),
    (1, 8, 9, 20, 1, 3, 1, 1),
    (1, 3, 16, 17, 17, 7, 2, 3),
    (1, 6, 5, 11, 10, 5, 3, 2),  # stride 3: three column phases, each with its own zero edges
    (1, 4, 3, 2, 2, 3, 2, 2),  # padding wider than the input: phases with no input column at all
]


def reference(x, w, stride, pad, bias, act):
    y = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                   torch.from_numpy(bias).double(), stride=stride, padding=pad).numpy()
    return np.maximum(y, 0) if act == "relu" else np.clip(y, 0, 6) if act == "relu6" else y


def sparse_weight(rng, shape, pattern):
    w = rng.standard_normal(shape).astype(np.float32)
    if pattern == "2:4" and shape[1] % 4 == 0:
        g = w.reshape(shape[0], shape[1] // 4, 4, *shape[2:])
        drop = np.argsort(np.abs(g), axis=2)[:, :, :2]
        np.put_along_axis(g, drop, 0.0, axis=2)
        return g.reshape(shape)
    w[rng.random(shape) < 0.8] = 0
    return w


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pattern", ["2:4", "u:0.8"])
def test_conv_matches_dense_reference(isa, shape, pattern) -> None:
    n, cin, cout, h, w, k, s, p = shape
    rng = np.random.default_rng(hash((shape, pattern)) % 2**32)
    wt = sparse_weight(rng, (cout, cin, k, k), pattern)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    packed = pack_conv(wt)
    assert np.array_equal(packed.to_dense(), wt)
    for act, threads in (("none", 1), ("relu", 2), ("relu6", 2)):
        y = conv2d(x, packed, s, (p, p, p, p), b, act, threads=threads, isa=isa)
        ref = reference(x, wt, s, p, b, act)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= 1e-5 * (np.abs(ref).max() + 1e-6)


def test_asymmetric_pads_and_no_bias(isa) -> None:
    rng = np.random.default_rng(7)
    wt = sparse_weight(rng, (12, 20, 3, 3), "u:0.8")
    x = rng.standard_normal((1, 20, 11, 10)).astype(np.float32)
    y = conv2d(x, pack_conv(wt, kc=8), 1, (0, 1, 2, 0), isa=isa)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 2), (1, 0)))
    ref = reference(xp, wt, 1, 0, np.zeros(12, np.float32), "none")
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_nm_rows_need_no_padding() -> None:
    rng = np.random.default_rng(3)
    packed = pack_conv(sparse_weight(rng, (32, 64, 1, 1), "2:4"), kc=16)
    assert packed.slots == 32 * 64 // 2  # every pair equally long in every chunk


def test_empty_rows_and_all_zero_weight(isa) -> None:
    wt = np.zeros((5, 6, 1, 1), np.float32)
    wt[2, 3] = 1.5
    x = np.random.default_rng(0).standard_normal((1, 6, 4, 4)).astype(np.float32)
    y = conv2d(x, pack_conv(wt), bias=np.arange(5, dtype=np.float32), isa=isa)
    ref = reference(x, wt, 1, 0, np.arange(5, dtype=np.float32), "none")
    assert np.allclose(y, ref, atol=1e-6)


def test_from_arrays_round_trip_and_rejects_malformed() -> None:
    rng = np.random.default_rng(5)
    p = pack_conv(sparse_weight(rng, (9, 40, 3, 3), "u:0.8"), kc=16)
    args = (p.cout, p.cin, p.kh, p.kw, p.kc)
    q = PackedConv.from_arrays(*args, p.perm, p.row_ptr, p.taps, p.values)
    assert np.array_equal(q.to_dense(), p.to_dense())
    bad_taps = p.taps.copy()
    bad_taps[0] = p.cin * 9
    bad_perm = p.perm.copy()
    bad_perm[0] = bad_perm[1]
    bad_rp = p.row_ptr.copy()
    bad_rp[1] = bad_rp[2] + 1
    wrong_chunk = p.taps.copy()
    wrong_chunk[0] = p.cin * 9 - 1  # a tap of the last chunk stored in the first
    for perm, rp, taps in [(p.perm, p.row_ptr, bad_taps), (bad_perm, p.row_ptr, p.taps), (p.perm, bad_rp, p.taps),
                           (p.perm, p.row_ptr, wrong_chunk), (p.perm, p.row_ptr[:-1], p.taps)]:
        with pytest.raises(sk.PackedFormatError):
            PackedConv.from_arrays(*args, perm, rp, taps, p.values)


def test_bad_arguments_are_one_line_errors() -> None:
    p = pack_conv(np.ones((4, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="expected"):
        conv2d(np.zeros((1, 5, 8, 8), np.float32), p)
    with pytest.raises(sk.PackedFormatError, match="unsupported shape"):
        conv2d(np.zeros((1, 4, 1, 1), np.float32), p)  # 3x3 kernel, no padding, 1x1 input
    with pytest.raises(ValueError, match="act"):
        conv2d(np.zeros((1, 4, 8, 8), np.float32), p, act="gelu")
