"""The compile-speed rewrites compute exactly what the code they replaced computed: N:M masks
without argsort, N:M packing without argsort, sessions fed weights in memory instead of a
serialized copy (and the reuse of the last such session)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.ir.io import model_bytes
from sparsec.ir.session_model import MIN_EXTERNAL_BYTES, session_model
from sparsec.kernels import pack_nm, prune_nm
from sparsec.kernels.packing_nm import TILE, decode_positions
from sparsec.nm_pattern import nm_mask
from sparsec.numerics import sample_inputs
from sparsec.runtime import make_session
from sparsec.testing import make_model, seeded


def _argsort_mask(scores: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """The former nm_mask: stable argsort of -score per group."""
    g = np.moveaxis(scores, axis, -1)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(np.moveaxis(scores, axis, -1).shape), -1, axis)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (2, 16), (8, 16)])
@pytest.mark.parametrize("shape,axis", [((32, 24), 0), ((24, 32), 1), ((8, 16, 3, 3), 1), ((2, 4, 32), -1)])
def test_nm_mask_matches_stable_argsort(n: int, m: int, shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(n * 100 + m)
    if shape[axis] % m:
        pytest.skip("axis not a multiple of m")
    for scores in (
        np.abs(rng.standard_normal(shape)).astype(np.float32),
        np.abs(np.round(rng.standard_normal(shape))).astype(np.float32),  # many ties
        np.zeros(shape, dtype=np.float32),  # all tied: earliest positions win
        rng.integers(0, 3, size=shape),  # integer scores
    ):
        got = nm_mask(scores, n, m, axis)
        assert got.shape == scores.shape and got.dtype == bool
        np.testing.assert_array_equal(got, _argsort_mask(scores, n, m, axis))


def test_nm_mask_with_nan_scores_falls_back_to_argsort() -> None:
    scores = np.abs(np.random.default_rng(0).standard_normal((16, 8))).astype(np.float32)
    scores[0, 0] = scores[5, 3] = np.nan
    np.testing.assert_array_equal(nm_mask(scores, 2, 4, 0), _argsort_mask(scores, 2, 4, 0))


def _sorted_positions(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """The former packing order: nonzeros first, then the lowest zeros, sorted by position."""
    k, cols = w.shape
    tiles = -(-cols // TILE)
    padded = np.zeros((k, tiles * TILE), dtype=np.float32)
    padded[:, :cols] = w
    wg = padded.reshape(k // m, m, tiles, TILE).transpose(2, 0, 3, 1)
    idx = np.arange(m)
    key = np.where(wg != 0, idx, m + idx)
    pos = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :n], axis=-1)
    return pos.transpose(0, 1, 3, 2)  # [tiles, groups, n, lane]


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (4, 16), (8, 16)])
def test_pack_nm_positions_and_values_match_the_sorting_reference(n: int, m: int) -> None:
    rng = np.random.default_rng(m * 10 + n)
    w = prune_nm(rng.standard_normal((m * 5, 40)).astype(np.float32), n, m)
    w[rng.random(w.shape) < 0.4] = 0.0  # groups with fewer than n nonzeros
    packed = pack_nm(w, n, m)
    tiles, groups = -(-40 // TILE), (m * 5) // m
    pos = decode_positions(np.asarray(packed.meta), n, m, tiles, groups)
    np.testing.assert_array_equal(pos, _sorted_positions(w, n, m))
    assert np.all(np.diff(pos.astype(int), axis=2) > 0)  # strictly increasing per group
    np.testing.assert_array_equal(packed.to_dense(), w)


MLP = """
<ir_version: 10, opset_import: ["" : 18]>
mlp (float[2,64] x) => (float[2,32] y) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _mlp(seed: int = 1) -> ir.Model:
    return make_model(MLP, w1=seeded((64, 64), seed), b1=seeded((64,), seed + 1), w2=seeded((64, 32), seed + 2))


def test_session_model_hands_large_weights_over_in_memory() -> None:
    model = _mlp()
    tensors = {name: v.const_value for name, v in model.graph.initializers.items()}
    split = session_model(model)
    # The model ends as it began: the very same tensors (placeholders only while serializing).
    assert all(v.const_value is tensors[name] for name, v in model.graph.initializers.items())
    big = {name for name, v in model.graph.initializers.items() if v.const_value.nbytes >= MIN_EXTERNAL_BYTES}
    assert set(split.initializers) == big == {"w1", "w2"}
    assert len(split.graph_bytes) < 2000 < len(model_bytes(model))  # no weight bytes inside
    feeds = sample_inputs(model)
    want = make_session(model_bytes(model)).run(None, feeds)[0]
    np.testing.assert_array_equal(make_session(split).run(None, feeds)[0], want)


def test_the_last_in_memory_session_is_reused_for_the_same_model_only() -> None:
    model = _mlp()
    first = make_session(session_model(model))
    assert make_session(session_model(model)) is first  # same graph, same weight arrays
    assert make_session(session_model(model), threads=1) is not first
    other = make_session(session_model(_mlp(seed=7)))
    assert other is not first
    feeds = sample_inputs(model)
    assert not np.array_equal(other.run(None, feeds)[0], first.run(None, feeds)[0])


def test_an_unused_large_initializer_stays_inline() -> None:
    """ONNX Runtime drops initializers no node uses before taking in-memory weights (and then
    refuses their names): such an initializer must travel inside the graph bytes."""
    model = _mlp()
    spare = ir.Value(name="spare", const_value=ir.tensor(np.ones((64, 64), dtype=np.float32), name="spare"))
    model.graph.register_initializer(spare)
    split = session_model(model)
    assert "spare" not in split.initializers and {"w1", "w2"} <= set(split.initializers)
    feeds = sample_inputs(model)
    np.testing.assert_array_equal(make_session(split).run(None, feeds)[0], make_session(model_bytes(model)).run(None, feeds)[0])
