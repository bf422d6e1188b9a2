"""SparseAttention's summary keys (`summary_blocks`): semantics, reference lowering, verifier."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.dialect import verify_node
from sparsec.dialect.attention import BlockLayout, numpy_sparse_attention

from .test_sparse_attention_op import attention_model, numpy_attention, run_reference

SUMMARY_CASES = [
    # (q shape, kv shape, attributes): static, causal, GQA, per-head flags, partial last block
    ((1, 4, 37, 8), (1, 2, 37, 8), {"block": 4, "causal": 1, "local_blocks": [1, 2, 1, -1], "sink_blocks": [1],
                                    "summary_blocks": [1, 1, 0, 1]}),
    # non-causal with run-time top-k
    ((2, 2, 33, 16), (2, 2, 33, 16), {"block": 8, "causal": 0, "local_blocks": [1], "sink_blocks": [0],
                                      "topk_blocks": [1, 2], "summary_blocks": [1]}),
    # a prefill after a cache (partial first query block), causal top-k
    ((1, 2, 10, 8), (1, 2, 26, 8), {"block": 4, "causal": 1, "local_blocks": [1], "sink_blocks": [0],
                                    "topk_blocks": [1], "summary_blocks": [1]}),
    # an explicit block mask
    ((1, 3, 16, 4), (1, 1, 16, 4), {"block": 4, "causal": 0, "block_mask": np.eye(4, dtype=np.uint8)[None].repeat(3, 0),
                                    "summary_blocks": [1, 0, 1]}),
]
BIAS = [False, False, True, False]  # the second case also runs with a padding-like bias below


@pytest.mark.parametrize(("q_shape", "kv_shape", "attrs", "with_bias"),
                         [(*c, b) for c, b in zip(SUMMARY_CASES, BIAS, strict=True)] + [(*SUMMARY_CASES[1], True)])
def test_reference_lowering_matches_numpy(q_shape, kv_shape, attrs, with_bias) -> None:
    rng = np.random.default_rng(1)
    bias_shape = (q_shape[0], 1, q_shape[2], kv_shape[2]) if with_bias else None
    model = attention_model(q_shape, kv_shape, bias_shape, scale=0.3, **attrs)
    node = next(iter(model.graph))
    assert verify_node(node) == []
    layout = BlockLayout.of(node)
    assert layout.summarised
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", q_shape), ("k", kv_shape), ("v", kv_shape))}
    if with_bias:  # random bias, and the last 5 keys masked (padding: a partial and a whole masked block)
        bias = rng.standard_normal(bias_shape)
        bias[..., -5:] = -1e9
        feeds["bias"] = bias.astype(np.float32)
    got = run_reference(model, feeds)
    want = numpy_sparse_attention(feeds["q"], feeds["k"], feeds["v"], layout, 0.3, feeds.get("bias"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The summary keys change the result (else this test could not fail).
    plain = numpy_attention(feeds["q"], feeds["k"], feeds["v"], layout, 0.3, feeds.get("bias"))
    assert np.abs(plain - want).max() > 1e-3


def test_summary_key_is_the_block_mean_with_log_count() -> None:
    # One query, non-causal, block 2: key block 0 kept (local 1 around query block 0), block 1
    # (keys 2, 3) left out and read as one key: mean key, logit + log 2, mean value.
    q = np.array([[[[1.0, 0.0]]]], np.float32)
    k = np.array([[[[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]]], np.float32)
    v = np.array([[[[1.0], [1.0], [4.0], [2.0]]]], np.float32)
    layout = BlockLayout(2, False, (1,), (0,), summary_blocks=(1,))
    got = numpy_sparse_attention(q, k, v, layout, 1.0)
    # Query 0 sits at position 3 (the last queries align with the last keys): its block is 1,
    # so block 1 is kept and block 0 (keys 0, 1: mean 0, value mean 1) is summarised.
    logits = np.array([2.0, 0.0, 0.0 + np.log(2.0)])
    p = np.exp(logits) / np.exp(logits).sum()
    assert got[0, 0, 0, 0] == pytest.approx(p @ np.array([4.0, 2.0, 1.0]))
    # Every block kept: no summary key, plain attention.
    dense = BlockLayout(2, False, (-1,), (0,), summary_blocks=(1,))
    s = k[0, 0] @ q[0, 0, 0]
    want = np.exp(s) / np.exp(s).sum() @ v[0, 0, :, 0]
    assert numpy_sparse_attention(q, k, v, dense, 1.0)[0, 0, 0, 0] == pytest.approx(want)


def test_density_counts_summary_keys() -> None:
    # 4 key blocks of 4, non-causal, local 1: per query block 1 kept + 3 summarised at 1/4 each.
    layout = BlockLayout(4, False, (1,), (0,), summary_blocks=(1,))
    assert layout.density(1, 16, 16) == pytest.approx((4 * 1 + 4 * 3 / 4) / 16)
    # Causal: only blocks wholly before the query block are summarised (0+1+2+3 of them).
    causal = BlockLayout(4, True, (1,), (0,), summary_blocks=(1,))
    assert causal.density(1, 16, 16) == pytest.approx((4 + 6 / 4) / 10)


@pytest.mark.parametrize(
    ("attrs", "bias", "problem"),
    [
        ({"local_blocks": [1], "summary_blocks": [2]}, False, "summary_blocks must be 0 or 1"),
        ({"local_blocks": [1], "summary_blocks": [1, 0]}, False, "layout lists"),
    ],
)
def test_verifier_rejects_bad_summary(attrs, bias, problem) -> None:
    model = attention_model((1, 4, 8, 8), (1, 2, 8, 8), (1, 1, 8, 8) if bias else None, scale=1.0, block=4, causal=0,
                            **attrs)
    problems = verify_node(next(iter(model.graph)))
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("causal", "padded"), [(False, False), (True, False), (False, True)])
def test_profile_error_of_summary_candidates_is_the_ops(causal: bool, padded: bool) -> None:
    """Every summary candidate's profiled error equals the relative output error of the op's own
    semantics (numpy_sparse_attention) for that layout, static and top-k alike; with a padding
    bias the profile reads it off the probabilities alone."""
    from sparsec.passes.attention.head_profile import _Accumulator

    from .test_auto_layout import _match

    nk, block, d, heads = 6, 4, 8, 2
    seq = nk * block
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, heads, seq, d)).astype(np.float32)
    k = rng.standard_normal((1, heads, seq, d)).astype(np.float32)
    v = rng.standard_normal((1, heads, seq, d)).astype(np.float32)
    scale = 0.4
    bias = None
    if padded:  # the last 6 keys are padding: one whole block and a half
        bias = np.zeros((1, 1, seq, seq), np.float32)
        bias[..., -6:] = -1e9
    dense = BlockLayout(block, causal)
    want_dense = numpy_sparse_attention(q, k, v, dense, scale, bias)
    s = scale * np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64))
    if bias is not None:
        s = s + bias
    if causal:
        s = s + np.triu(np.full((seq, seq), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    acc = _Accumulator(_match(heads, seq), block, causal, topk=True, summary=True, scale=scale)
    acc.add(p, v, np.ones((1, seq)), q, k)
    prof = acc.profile("blk")
    assert any(prof.summary) and not prof.summarised(0)
    checked = 0
    for c, (w, sinks, t) in enumerate(prof.layouts):
        if not prof.summarised(c):
            continue
        layout = BlockLayout(block, causal, (w,), (sinks,), None, (t,), (1,))
        got = numpy_sparse_attention(q, k, v, layout, scale, bias)
        err = ((got - want_dense) ** 2).sum((0, 2, 3)) / (want_dense ** 2).sum((0, 2, 3))
        np.testing.assert_allclose(prof.error[:, c], err, rtol=2e-3, atol=1e-6)
        assert prof.kept[c] == pytest.approx(layout.density(1, seq, seq) * prof.kept[0])
        plain = prof.layouts.index((w, sinks, t))
        assert not prof.summarised(plain)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("pipeline", ["sparse-attention{layout=auto density=0.4 block=4 summary=true}",
                                      "sparse-attention{layout='local:4,summary:1' block=4}"])
def test_compile_with_summary_keys_lowers_to_the_kernel(hf_export, tmp_path, capsys, pipeline) -> None:
    """GPT-2 (causal, a kept mask bias) compiled with summary keys: the layout is recorded and
    every block runs on the fused kernel, whose output the fidelity check compares with dense."""
    import json

    import onnx

    from sparsec import kernels as sk
    from sparsec.cli.main import main

    from .test_auto_layout import _calib

    calib = tmp_path / "calib.npz"
    _calib(calib)
    out = tmp_path / "out"
    rc = main(["compile", str(hf_export("gpt2", "legacy")), "-p", pipeline, "--calib", str(calib), "--no-bench",
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    stats = next(p for p in manifest["passes"] if p["pass"].startswith("sparse-attention"))
    rewritten = stats["stats"]["rewritten"]
    assert rewritten and all("summary_blocks" in b for b in rewritten)
    if "layout=auto" not in pipeline:  # (auto may or may not pick them on this tiny model)
        assert all(np.atleast_1d(b["summary_blocks"]).all() for b in rewritten)
    assert np.isfinite(stats["fidelity"]["max_abs"]) and stats["fidelity"]["worst_cosine"] > 0.5
    if sk.kernels_available():
        ops = {(n.domain, n.op_type) for n in onnx.load(out / "model.onnx").graph.node}
        assert ("com.sparsec.kernels", "SparseAttention") in ops and ("com.sparsec", "SparseAttention") not in ops


SOFTMAX_CASES = [
    ((1, 4, 37, 8), (1, 2, 37, 8), {"block": 4, "causal": 1, "local_blocks": [1], "sink_blocks": [1],
                                    "topk_blocks": [2, 0, 1, 3], "topk_score": 1}),
    ((2, 2, 33, 16), (2, 2, 33, 16), {"block": 8, "causal": 0, "local_blocks": [1], "sink_blocks": [0],
                                      "topk_blocks": [2], "topk_score": 1, "summary_blocks": [1]}),
    ((1, 2, 10, 8), (1, 2, 26, 8), {"block": 4, "causal": 1, "local_blocks": [1], "sink_blocks": [0],
                                    "topk_blocks": [2], "topk_score": 1}),
]


@pytest.mark.parametrize(("q_shape", "kv_shape", "attrs"), SOFTMAX_CASES)
def test_softmax_topk_score_reference_matches_numpy(q_shape, kv_shape, attrs) -> None:
    rng = np.random.default_rng(4)
    model = attention_model(q_shape, kv_shape, None, scale=0.7, **attrs)
    node = next(iter(model.graph))
    assert verify_node(node) == []
    layout = BlockLayout.of(node)
    assert layout.topk_score == 1 and layout.scale == pytest.approx(0.7)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", q_shape), ("k", kv_shape), ("v", kv_shape))}
    got = run_reference(model, feeds)
    want = numpy_sparse_attention(feeds["q"], feeds["k"], feeds["v"], layout, 0.7)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The two estimates pick differently here (else the test could not tell them apart).
    mean = BlockLayout(**{**layout.__dict__, "topk_score": 0})
    assert (mean.dynamic_blocks(feeds["q"], feeds["k"]) != layout.dynamic_blocks(feeds["q"], feeds["k"])).any()


def test_softmax_score_finds_one_heavy_key() -> None:
    # Key block 1 holds one key aligned with the queries among three opposed ones: its mean is
    # below block 2's mild keys, its softmax mass above.
    q = np.zeros((1, 1, 16, 2), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((1, 1, 16, 2), np.float32)
    k[0, 0, 4, 0], k[0, 0, 5:8, 0] = 8.0, -4.0
    k[0, 0, 8:12, 0] = 1.0
    args = dict(block=4, causal=False, local_blocks=(1,), sink_blocks=(0,), topk_blocks=(1,))
    mean = BlockLayout(**args).dynamic_blocks(q, k)[0, 0, 0]
    soft = BlockLayout(**args, topk_score=1).dynamic_blocks(q, k)[0, 0, 0]
    assert mean.tolist() == [True, False, True, False] and soft.tolist() == [True, True, False, False]
