"""bench/attention_bench.py compares sparsec's kernel with ONNX Runtime's own block-sparse op,
com.microsoft.SparseAttention: the comparison is like for like only if that op, given the
bench's CSR form of the layout, computes what com.sparsec.SparseAttention's reference
lowering computes. Checked here at a test-sized sequence (the bench's own check is at 4096)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("attention_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("local", "sinks"), [(2, 1), (1, 0), (3, 2)])
def test_ort_sparse_attention_matches_reference(local: int, sinks: int) -> None:
    ab = _bench()
    seq = 6 * ab.BLOCK  # 6 block rows: the first few dense, the later ones skipping blocks
    rng = np.random.default_rng(local * 10 + sinks)
    feeds4 = {n: rng.standard_normal((1, ab.HEADS, seq, ab.DIM), dtype=np.float32) for n in "qkv"}
    feeds3 = {n: ab.bshd(x) for n, x in feeds4.items()}
    run = ab.ms_sparse_attention_runner(seq, local, sinks, feeds3)
    first = run().copy()
    # The K/V cache buffers are bound as both past and present: a repeated call must not drift.
    np.testing.assert_array_equal(run(), first)
    got = first.reshape(1, seq, ab.HEADS, ab.DIM).transpose(0, 2, 1, 3)
    want = ab._session(ab.reference_model(seq, local, sinks), False).run(None, feeds4)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The layout matters: a wider window gives a clearly different result.
    wider = ab._session(ab.reference_model(seq, local + 1, sinks), False).run(None, feeds4)[0]
    assert np.abs(got - wider).max() > 1e-2


def test_layout_csr_rows_and_columns() -> None:
    ab = _bench()
    rows, cols = ab.layout_csr(6 * ab.BLOCK, 2, 1)
    # Block rows keep: {0}, {0,1}, {0,1,2}, {0,2,3}, {0,3,4}, {0,4,5} (sink 0, window of 2 ending at the row).
    assert rows.tolist() == [[0, 1, 3, 6, 9, 12, 15]]
    assert cols.tolist() == [[0, 0, 1, 0, 1, 2, 0, 2, 3, 0, 3, 4, 0, 4, 5]]
