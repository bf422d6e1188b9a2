"""The fused block-sparse attention kernel: every compiled ISA against the op's semantics, and
the ONNX Runtime custom op against the reference lowering."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sparsec import kernels as sk
from sparsec.calib.metrics import compare
from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import BlockLayout
from sparsec.ir.io import inline_copy, load_model, model_bytes
from sparsec.kernels.attention import block_sparse_attention
from sparsec.numerics import evaluate, sample_inputs
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.runtime import KERNEL_DOMAIN, make_session

pytestmark = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")


def _op_tests():
    # Shared helpers of the op tests (pytest's importlib mode has no package to import from).
    spec = importlib.util.spec_from_file_location("op_tests", Path(__file__).with_name("test_sparse_attention_op.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OPS = _op_tests()
ISAS = sk.available_isas() if sk.kernels_available() else []

CASES = [
    # b, hq, hkv, sq, sk, d, dv, block, causal, local, sinks, bias, mask
    (1, 4, 2, 40, 40, 8, 8, 8, True, [1, 2, 3, -1], [1, 0, 0, 0], False, False),
    (2, 2, 2, 33, 33, 16, 24, 8, False, [2], [0], True, False),
    (1, 2, 2, 8, 24, 8, 8, 4, True, [2], [1], False, False),
    (1, 2, 1, 100, 100, 72, 40, 16, True, [-1], [0], False, False),
    (1, 2, 2, 64, 64, 256, 256, 32, True, [1], [1], False, False),
    (1, 3, 3, 20, 20, 5, 3, 4, False, None, None, False, True),
    (1, 1, 1, 7, 7, 4, 4, 64, False, [1], [0], True, False),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_semantics(isa, case) -> None:
    b, hq, hkv, sq, skk, d, dv, block, causal, local, sinks, with_bias, with_mask = case
    rng = np.random.default_rng(7)
    q = rng.standard_normal((b, hq, sq, d), dtype=np.float32)
    k = rng.standard_normal((b, hkv, skk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, skk, dv), dtype=np.float32)
    bias = None
    if with_bias:
        bias = np.where(rng.random((b, 1, sq, skk)) < 0.2, -1e9, rng.standard_normal((b, 1, sq, skk))).astype(np.float32)
    nb = -(-skk // block)
    mask = ((rng.random((hq, nb, nb)) < 0.5) | np.eye(nb, dtype=bool)) if with_mask else None
    layout = BlockLayout(block, causal, tuple(local or [-1]), tuple(sinks or [0]), mask)
    want = OPS.numpy_attention(q, k, v, layout, 0.3, bias)
    for threads in (1, 2):
        got = block_sparse_attention(
            q, k, v, scale=0.3, block=block, causal=causal, local_blocks=local, sink_blocks=sinks,
            block_mask=mask, bias=bias, isa=isa, threads=threads)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_ort_op_matches_reference(with_bias) -> None:
    q_shape, kv_shape = (1, 4, 40, 16), (1, 2, 40, 16)
    bias_shape = (1, 1, 40, 40) if with_bias else None
    model = OPS.attention_model(q_shape, kv_shape, bias_shape, scale=0.25, block=8, causal=1,
                                local_blocks=[1, 2, 2, -1], sink_blocks=[1])
    feeds = sample_inputs(model, seed=3)
    want = evaluate(model, feeds)
    lowered = inline_copy(model)
    records = PassManager(parse_pipeline("lower-attention-kernels,legalize-dense")).run(lowered, PassContext())
    assert records[0].stats["lowered"] == 1
    assert [n.domain for n in lowered.graph] == [KERNEL_DOMAIN]
    got = make_session(model_bytes(lowered), 2).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_ort_op_rejects_bad_layout() -> None:
    model = OPS.attention_model((1, 2, 8, 8), (1, 2, 8, 8), scale=1.0, block=4, causal=0, local_blocks=[1])
    PassManager(parse_pipeline("lower-attention-kernels"), verify_each=False).run(model, PassContext())
    layout = next(v for v in model.graph.initializers.values() if v.name.endswith(".layout"))
    layout.const_value = __import__("onnx_ir").tensor(np.array([[0], [0]], np.int32), name=layout.name)
    with pytest.raises(Exception, match="local window"):
        make_session(model_bytes(model), 1)


def test_backend_runs_rewritten_export(hf_export) -> None:
    """gpt2 export -> sparse-attention -> the ORT backend's legalization: kernel op in the
    graph, outputs equal to the reference lowering of the same rewritten model."""
    from sparsec.backends.ort.backend import OrtBackend

    model = load_model(hf_export("gpt2", "legacy"))
    PassManager(parse_pipeline("sparse-attention{layout='local:4,sinks:4' block=4}")).run(model, PassContext())
    feeds = sample_inputs(model, seed=1)
    want = evaluate(model, feeds)
    PassManager(OrtBackend(kernels=True).legalize_pipeline()).run(model, PassContext())
    kinds = {(n.domain, n.op_type) for n in model.graph}
    assert (KERNEL_DOMAIN, "SparseAttention") in kinds and not any(d == DOMAIN for d, _ in kinds)
    got = make_session(model_bytes(model), 2).run(None, feeds)
    assert compare(want, got).rel_l2 < 1e-5


TOPK_CASES = [
    # b, hq, hkv, sq, sk, d, block, causal, local, sinks, topk, bias
    (2, 4, 2, 27, 45, 64, 8, True, [1], [0], [0, 1, 2, 3], False),  # GQA, offset, partial blocks
    (1, 4, 2, 45, 45, 40, 8, False, [1], [1], [2], True),           # non-causal, bias
    (1, 2, 2, 30, 70, 40, 16, True, [2, 1], [1, 0], [1, 0], False),  # partial first query block
    (1, 2, 1, 64, 64, 64, 16, False, [1], [0], [0], False),          # top-k 0 everywhere: static
]


def _qkv(b: int, hq: int, hkv: int, sq: int, skk: int, d: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, hq, sq, d), dtype=np.float32),
            rng.standard_normal((b, hkv, skk, d), dtype=np.float32),
            rng.standard_normal((b, hkv, skk, d), dtype=np.float32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", TOPK_CASES)
def test_kernel_topk_matches_semantics(isa, case) -> None:
    b, hq, hkv, sq, skk, d, block, causal, local, sinks, topk, with_bias = case
    q, k, v = _qkv(b, hq, hkv, sq, skk, d)
    bias = None
    if with_bias:
        bias = np.random.default_rng(1).standard_normal((1, 1, sq, skk)).astype(np.float32)
    layout = BlockLayout(block, causal, tuple(local), tuple(sinks), None, tuple(topk))
    want = OPS.numpy_attention(q, k, v, layout, 0.3, bias)
    if layout.dynamic:  # the case must tell top-k from the static layout
        static = OPS.numpy_attention(q, k, v, BlockLayout(block, causal, tuple(local), tuple(sinks)), 0.3, bias)
        assert np.abs(static - want).max() > 1e-2
    for threads in (1, 2):
        got = block_sparse_attention(q, k, v, scale=0.3, block=block, causal=causal, local_blocks=local,
                                     sink_blocks=sinks, topk_blocks=topk, bias=bias, isa=isa, threads=threads)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_topk_on_block_mask_and_ties(isa) -> None:
    # The C API also takes top-k on an explicit mask (the ORT op does not). Key blocks 1 and 2
    # hold the same keys: equal scores, the tie goes to block 1.
    q, k, v = _qkv(1, 2, 2, 32, 32, 8)
    q = np.abs(q)
    k[:, :, 8:24] = 2.0  # blocks 1 and 2: the same, and the best scores for every query block
    mask = np.eye(4, dtype=bool)[None]
    layout = BlockLayout(8, False, block_mask=mask, topk_blocks=(1, 2))
    blocks = layout.dynamic_blocks(q, k)
    assert blocks[0, 0, 0].tolist() == [True, True, False, False]
    assert blocks[0, 0, 3].tolist() == [False, True, False, True]
    assert blocks.sum() == 4 * 2 + 4 * 3
    want = OPS.numpy_attention(q, k, v, layout, 0.5)
    got = block_sparse_attention(q, k, v, scale=0.5, block=8, causal=False, block_mask=mask, topk_blocks=[1, 2], isa=isa)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_topk_covering_everything_is_dense(causal) -> None:
    q, k, v = _qkv(1, 4, 2, 20, 37, 40)
    want = OPS.numpy_attention(q, k, v, BlockLayout(8, causal), 0.3)
    got = block_sparse_attention(q, k, v, scale=0.3, block=8, causal=causal, local_blocks=[1], topk_blocks=[5])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(("causal", "topk", "with_bias"), [(1, [0, 1, 2, 3], False), (0, [2], True)])
def test_ort_op_topk_matches_reference(causal, topk, with_bias) -> None:
    from sparsec.backends.ort.lower_attention import raise_attention_kernel

    q_shape, kv_shape = (1, 4, 30, 40), (1, 2, 45, 40)
    bias_shape = (1, 1, 30, 45) if with_bias else None
    model = OPS.attention_model(q_shape, kv_shape, bias_shape, scale=0.25, block=8, causal=causal,
                                local_blocks=[1], sink_blocks=[1, 0, 0, 1], topk_blocks=topk)
    feeds = sample_inputs(model, seed=3)
    want = evaluate(model, feeds)  # the op's reference lowering, in ORT
    layout = BlockLayout.of(next(iter(model.graph)))
    np.testing.assert_allclose(want[0], OPS.numpy_attention(feeds["q"], feeds["k"], feeds["v"], layout, 0.25,
                                                            feeds.get("bias")), rtol=1e-4, atol=1e-5)
    lowered = inline_copy(model)
    records = PassManager(parse_pipeline("lower-attention-kernels,legalize-dense")).run(lowered, PassContext())
    assert records[0].stats["lowered"] == 1
    table = next(v for v in lowered.graph.initializers.values() if v.name.endswith(".layout")).const_value.numpy()
    assert table.shape == (3, 4) and table[2].tolist() == (topk * 4 if len(topk) == 1 else topk)
    got = make_session(model_bytes(lowered), 2).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    # `inspect` raises the kernel op back to the same SparseAttention layout.
    raised = raise_attention_kernel(lowered, next(iter(lowered.graph)))
    assert BlockLayout.of(raised).topk_blocks == tuple(table[2])
    np.testing.assert_allclose(evaluate(lowered, feeds)[0], want[0], rtol=1e-5, atol=1e-5)


def test_lowering_keeps_static_layout_two_rows_and_mask_topk_unlowered() -> None:
    static = OPS.attention_model((1, 2, 16, 8), (1, 2, 16, 8), scale=1.0, block=4, causal=1,
                                 local_blocks=[1], topk_blocks=[0])
    PassManager(parse_pipeline("lower-attention-kernels")).run(static, PassContext())
    assert next(v for v in static.graph.initializers.values() if v.name.endswith(".layout")).const_value.shape == (2, 1)
    masked = OPS.attention_model((1, 2, 16, 8), (1, 2, 16, 8), scale=1.0, block=4, causal=0,
                                 block_mask=np.eye(4, dtype=np.uint8)[None], topk_blocks=[1])
    records = PassManager(parse_pipeline("lower-attention-kernels")).run(masked, PassContext())
    assert records[0].stats["lowered"] == 0
    assert "topk_blocks" in records[0].stats["kept_reference"]["sa"]


def test_ort_op_rejects_negative_topk() -> None:
    model = OPS.attention_model((1, 2, 8, 8), (1, 2, 8, 8), scale=1.0, block=4, causal=0, local_blocks=[1],
                                topk_blocks=[1])
    PassManager(parse_pipeline("lower-attention-kernels"), verify_each=False).run(model, PassContext())
    layout = next(v for v in model.graph.initializers.values() if v.name.endswith(".layout"))
    layout.const_value = __import__("onnx_ir").tensor(np.array([[1], [0], [-1]], np.int32), name=layout.name)
    with pytest.raises(Exception, match="top-k"):
        make_session(model_bytes(model), 1)


SUMMARY_CASES = [
    # b, hq, hkv, sq, sk, d, dv, block, causal, local, sinks, topk, summary, bias
    (1, 4, 2, 37, 37, 8, 8, 4, True, [1, 2, 1, -1], [1], [0], [1, 1, 0, 1], False),
    (2, 2, 2, 33, 33, 16, 24, 8, False, [1], [0], [1, 2], [1], False),
    (2, 2, 2, 33, 33, 16, 24, 8, False, [1], [0], [1, 2], [1], True),
    (1, 2, 2, 10, 26, 8, 8, 4, True, [1], [0], [1], [1], True),  # a prefill after a cache
    (1, 2, 1, 100, 100, 72, 40, 16, False, [1], [1], [2], [1, 0], False),
    (1, 1, 1, 200, 200, 8, 8, 4, False, [1], [0], [0], [1], False),  # 50 key blocks: 2 virtual tiles at bn 16/32
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", SUMMARY_CASES)
def test_kernel_summary_keys_match_semantics(isa, case) -> None:
    from sparsec.dialect.attention import numpy_sparse_attention

    b, hq, hkv, sq, skk, d, dv, block, causal, local, sinks, topk, summary, with_bias = case
    rng = np.random.default_rng(11)
    q = rng.standard_normal((b, hq, sq, d), dtype=np.float32)
    k = rng.standard_normal((b, hkv, skk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, skk, dv), dtype=np.float32)
    bias = None
    if with_bias:  # per batch row and query, the last 5 keys masked (padding)
        bias = rng.standard_normal((b, 1, sq, skk)).astype(np.float32)
        bias[..., -5:] = -1e9
    layout = BlockLayout(block, causal, tuple(local), tuple(sinks), None, tuple(topk), tuple(summary))
    want = numpy_sparse_attention(q, k, v, layout, 0.3, bias)
    plain = numpy_sparse_attention(q, k, v, BlockLayout(block, causal, tuple(local), tuple(sinks), None, tuple(topk)), 0.3,
                                   bias)
    assert np.abs(plain - want).max() > 1e-2  # the case tells summary keys from none
    for threads in (1, 2):
        got = block_sparse_attention(q, k, v, scale=0.3, block=block, causal=causal, local_blocks=local,
                                     sink_blocks=sinks, topk_blocks=topk, summary_blocks=summary, bias=bias, isa=isa,
                                     threads=threads)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(("causal", "topk"), [(1, [0]), (0, [2, 0, 1, 0])])
def test_ort_op_summary_matches_reference(causal, topk) -> None:
    from sparsec.backends.ort.lower_attention import raise_attention_kernel

    q_shape, kv_shape = (1, 4, 30, 40), (1, 2, 45, 40)
    model = OPS.attention_model(q_shape, kv_shape, None, scale=0.25, block=8, causal=causal,
                                local_blocks=[1], sink_blocks=[1, 0, 0, 1], topk_blocks=topk, summary_blocks=[1, 1, 0, 1])
    feeds = sample_inputs(model, seed=3)
    want = evaluate(model, feeds)  # the op's reference lowering, in ORT
    lowered = inline_copy(model)
    records = PassManager(parse_pipeline("lower-attention-kernels,legalize-dense")).run(lowered, PassContext())
    assert records[0].stats["lowered"] == 1
    table = next(v for v in lowered.graph.initializers.values() if v.name.endswith(".layout")).const_value.numpy()
    assert table.shape == (4, 4) and table[3].tolist() == [1, 1, 0, 1]
    got = make_session(model_bytes(lowered), 2).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    raised = raise_attention_kernel(lowered, next(iter(lowered.graph)))
    assert BlockLayout.of(raised).summary_blocks == (1, 1, 0, 1)
    np.testing.assert_allclose(evaluate(lowered, feeds)[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("causal", "summary"), [(True, [0]), (False, [1])])
def test_kernel_softmax_topk_score_matches_semantics(isa, causal, summary) -> None:
    from sparsec.dialect.attention import numpy_sparse_attention

    q, k, v = _qkv(2, 4, 2, 30, 45, 24)
    layout = BlockLayout(8, causal, (1,), (0,), None, (2, 1, 0, 3), tuple(summary), 1, 0.3)
    want = numpy_sparse_attention(q, k, v, layout, 0.3)
    mean = BlockLayout(8, causal, (1,), (0,), None, (2, 1, 0, 3), tuple(summary), 0, 0.3)
    assert (mean.dynamic_blocks(q, k) != layout.dynamic_blocks(q, k)).any()  # the estimates differ here
    for threads in (1, 2):
        got = block_sparse_attention(q, k, v, scale=0.3, block=8, causal=causal, local_blocks=[1], sink_blocks=[0],
                                     topk_blocks=[2, 1, 0, 3], summary_blocks=summary, topk_score=1, isa=isa,
                                     threads=threads)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_ort_op_softmax_topk_score_matches_reference() -> None:
    from sparsec.backends.ort.lower_attention import raise_attention_kernel

    model = OPS.attention_model((1, 4, 30, 40), (1, 2, 45, 40), None, scale=0.25, block=8, causal=1,
                                local_blocks=[1], sink_blocks=[0], topk_blocks=[2, 1, 0, 3], topk_score=1,
                                summary_blocks=[1])
    feeds = sample_inputs(model, seed=3)
    want = evaluate(model, feeds)
    lowered = inline_copy(model)
    records = PassManager(parse_pipeline("lower-attention-kernels,legalize-dense")).run(lowered, PassContext())
    assert records[0].stats["lowered"] == 1
    got = make_session(model_bytes(lowered), 2).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    raised = raise_attention_kernel(lowered, next(iter(lowered.graph)))
    assert BlockLayout.of(raised).topk_score == 1
