"""`com.sparsec.MoE`: verifier, and the reference lowering against a numpy forward pass."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.dialect import verify_node
from sparsec.dialect.reference import lower_to_reference
from sparsec.numerics import evaluate
from sparsec.passes.moe.experts import moe_forward

from .moe_models import moe_model, random_experts


def _node(model: ir.Model) -> ir.Node:
    return next(iter(model.graph))


def test_verifier_accepts_a_valid_op() -> None:
    ex, rw, rb = random_experts(16, 4, 8, gated=True)
    assert verify_node(_node(moe_model((3, 16), ex, rw, rb, 2, "silu"))) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda n: n.attributes.__setitem__("top_k", ir.AttrInt64("top_k", 5)), "top_k=5 must be in [1, E=4]"),
        (lambda n: n.attributes.__setitem__("activation", ir.AttrString("activation", "tanh")), "activation 'tanh'"),
        (lambda n: n.attributes.__setitem__("gating", ir.AttrString("gating", "max")), "gating 'max'"),
    ],
    ids=["top_k", "activation", "gating"],
)
def test_verifier_rejects(change, message: str) -> None:  # noqa: ANN001
    ex, rw, rb = random_experts(16, 4, 8, gated=False)
    node = _node(moe_model((3, 16), ex, rw, rb, 2, "relu"))
    change(node)
    problems = verify_node(node)
    assert any(message in p for p in problems), problems


def test_verifier_rejects_shape_mismatch() -> None:
    ex, rw, rb = random_experts(16, 4, 8, gated=False)
    ex.w2 = ex.w2[:, :, :15].copy()
    problems = verify_node(_node(moe_model((3, 16), ex, rw, rb, 2, "relu")))
    assert any("w2 has shape [4, 8, 15], expected [4, 8, 16]" in p for p in problems), problems


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize(("gated", "gating"), [(False, "none"), (True, "softmax"), (True, "softmax_all")])
def test_reference_lowering_matches_numpy(activation: str, gated: bool, gating: str) -> None:
    ex, rw, rb = random_experts(24, 6, 8, gated=gated, seed=3)
    shape = (2, 5, 24)
    model = moe_model(shape, ex, rw, rb, 2, activation, gating)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    lower_to_reference(model)
    assert all(n.domain == "" for n in model.graph)
    got = evaluate(model, {"x": x})[0]
    want = moe_forward(x.reshape(-1, 24), ex, rw, rb, 2, activation, gating).reshape(shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_softmax_all_gates_are_the_full_softmax_top_k_entries() -> None:
    from sparsec.passes.moe.experts import gates

    logits = np.random.default_rng(2).standard_normal((9, 6))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    g = gates(logits, 2, "softmax_all")
    top = np.argsort(-logits, axis=1)[:, :2]
    np.testing.assert_allclose(np.take_along_axis(g, top, axis=1), np.take_along_axis(p, top, axis=1), rtol=1e-12)
    assert ((g > 0).sum(axis=1) == 2).all() and (g.sum(axis=1) < 1).all()  # not renormalised
    np.testing.assert_allclose(gates(logits, 2, "softmax").sum(axis=1), 1.0)
