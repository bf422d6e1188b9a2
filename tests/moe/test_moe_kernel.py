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


def test_all_experts_equal_dense_ffn() -> None:
    ref, kern = _pair((16, 64), 64, 4, 32, 4, "relu")
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(kern, x), _run(ref, x), rtol=1e-5, atol=1e-5)


def test_malformed_weights_fail_at_session_creation() -> None:
    from sparsec.kernels import PackedFormatError

    _, kern = _pair((2, 16), 16, 4, 8, 2, "relu")
    node = next(iter(kern.graph))
    node.attributes["F"] = ir.AttrInt64("F", 9)  # the weights hold 8 neurons per expert
    with pytest.raises(PackedFormatError, match="MoEFFN .*w1 has 512 elements, expected 576"):
        make_session(model_bytes(kern), 1)
