"""The MoEFFN kernel op in real ONNX Runtime sessions against the reference lowering
(masked dense standard ONNX), on every ISA path, activation, gating, batch size and thread
count; malformed weights are rejected at session creation."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes
from sparsec.kernels import available_isas, kernels_available
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.runtime import KERNEL_DOMAIN, make_session

from .moe_models import moe_model, random_experts

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")
X86_ISAS = [i for i in ("avx512", "avx2", "scalar") if i in available_isas()]


def _pair(shape, d, e, f, top_k, act, gating="none", gated=False, seed=0):  # noqa: ANN001, ANN202
    ex, rw, rb = random_experts(d, e, f, gated, seed)
    ref = moe_model(shape, ex, rw, rb, top_k, act, gating)
    lower_to_reference(ref)
    kern = moe_model(shape, ex, rw, rb, top_k, act, gating)
    PassManager(parse_pipeline("lower-moe-kernels")).run(kern, PassContext())
    assert [n.op_type for n in kern.graph] == ["MoEFFN"] and next(iter(kern.graph)).domain == KERNEL_DOMAIN
    return ref, kern


def _run(model: ir.Model, x: np.ndarray, threads: int = 2) -> np.ndarray:
    return make_session(model_bytes(model), threads).run(None, {"x": x})[0]


@pytest.mark.parametrize("isa", X86_ISAS)
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu"])
def test_kernel_matches_reference_every_activation(monkeypatch, isa: str, act: str) -> None:
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", isa)
    for rows, gated, gating in ((1, False, "none"), (37, True, "softmax"), (5, True, "softmax_all")):
        ref, kern = _pair((rows, 40), 40, 6, 24, 2, act, gating, gated, seed=rows)
        x = np.random.default_rng(rows).standard_normal((rows, 40)).astype(np.float32)
        np.testing.assert_allclose(_run(kern, x), _run(ref, x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 129])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_batch_sizes_and_threads(rows: int, threads: int) -> None:
    # D and F/E not multiples of 16: column tails on every path; 3-D input
    ref, kern = _pair((1, rows, 72), 72, 8, 200 // 8, 3, "gelu", seed=rows)
    x = np.random.default_rng(0).standard_normal((1, rows, 72)).astype(np.float32)
    np.testing.assert_allclose(_run(kern, x, threads), _run(ref, x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("isa", X86_ISAS)
def test_full_width_panels_and_odd_depths(monkeypatch, isa: str) -> None:
    # D = 96: whole 32-column panels (the unmasked load paths); F = 33 per expert: one whole
    # panel and a 1-column tail, and an odd depth for the down projection's paired-k loop
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", isa)
    for rows in (1, 6, 13):
        ref, kern = _pair((rows, 96), 96, 4, 33, 2, "gelu", seed=rows)
        x = np.random.default_rng(rows).standard_normal((rows, 96)).astype(np.float32)
        for threads in (1, 2):
            np.testing.assert_allclose(_run(kern, x, threads), _run(ref, x), rtol=2e-5, atol=2e-5)


def test_all_experts_equal_dense_ffn() -> None:
    ref, kern = _pair((16, 64), 64, 4, 32, 4, "relu")
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(kern, x), _run(ref, x), rtol=1e-5, atol=1e-5)


def test_malformed_weights_fail_at_session_creation() -> None:
    from sparsec.kernels import PackedFormatError

    _, kern = _pair((2, 16), 16, 4, 8, 2, "relu")
    node = next(iter(kern.graph))
    node.attributes["F"] = ir.AttrInt64("F", 9)  # the weights hold 8 neurons per expert
    # panel layout: w1 [16, 8 -> 32 padded columns] fits F=9 too; w2 [8 rows of 32] does not
    with pytest.raises(PackedFormatError, match="MoEFFN .*w2 has 1024 elements, expected 1152"):
        make_session(model_bytes(kern), 1)


def test_panel_layout_indexing_and_roundtrip() -> None:
    from sparsec.backends.ort.lower_moe_kernels import PANEL, pack_panels, unpack_panels

    w = np.random.default_rng(0).standard_normal((3, 5, 70)).astype(np.float32)  # 70: a partial last panel
    flat = pack_panels(w)
    panels = -(-70 // PANEL)
    assert flat.shape == (3 * panels * 5 * PANEL,)
    for e, k, c in [(0, 0, 0), (1, 4, 33), (2, 3, 69), (2, 0, 64)]:
        p, j = divmod(c, PANEL)
        assert flat[((e * panels + p) * 5 + k) * PANEL + j] == w[e, k, c]
    assert not flat.reshape(3, panels, 5, PANEL)[:, -1, :, 70 - 2 * PANEL:].any()  # padding is zero
    np.testing.assert_array_equal(unpack_panels(flat, 3, 5, 70), w)


@pytest.mark.parametrize("gated", [False, True])
def test_dense_experts_lowered_as_panels_and_raised_back(gated: bool) -> None:
    from sparsec.cli.kernel_view import raise_kernel_ops

    ref, kern = _pair((5, 40), 40, 6, 24, 2, "gelu", "softmax", gated, seed=4)
    node = next(iter(kern.graph))
    assert node.attributes["panel"].as_int() == 32
    assert node.inputs[3].const_value.size == 6 * 40 * 32  # F = 24: one zero-padded panel per expert
    x = np.random.default_rng(5).standard_normal((5, 40)).astype(np.float32)
    got = _run(kern, x)
    raised = _pair((5, 40), 40, 6, 24, 2, "gelu", "softmax", gated, seed=4)[1]
    assert raise_kernel_ops(raised) == 1
    moe = next(n for n in raised.graph if n.op_type == "MoE")
    ex, _, _ = random_experts(40, 6, 24, gated, 4)
    for index, want in ((3, ex.w1), (5, ex.w2), (7, ex.w_up)):
        if want is not None:
            np.testing.assert_array_equal(moe.inputs[index].const_value.numpy(), want)
    assert not any(name.endswith(".panels") for name in raised.graph.initializers)
    lower_to_reference(raised)
    np.testing.assert_allclose(got, _run(raised, x), rtol=2e-5, atol=2e-5)
