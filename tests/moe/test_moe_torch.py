"""`com.sparsec.MoE` in torch (sparsec/recover/moe_op.py) equals its reference lowering in ORT,
and its gradients reach the parameters the op's gating semantics let them reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec.numerics import evaluate
from sparsec.recover.torch_graph import TorchGraph

from .moe_models import moe_model, random_experts


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize(("gated", "gating"), [(False, "none"), (False, "softmax"), (True, "softmax"), (True, "none")])
def test_torch_op_equals_the_reference_lowering_in_ort(activation: str, gated: bool, gating: str) -> None:
    ex, rw, rb = random_experts(24, 6, 8, gated=gated, seed=3)
    shape = (2, 5, 24)
    model = moe_model(shape, ex, rw, rb, 2, activation, gating)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = evaluate(model, {"x": x})[0]  # ORT on the reference lowering
    graph = TorchGraph(model)
    assert set(graph.param_key) == {"router_weight", "router_bias", "w1", "b1", "w2", "b2"} | ({"w_up"} if gated else set())
    with torch.no_grad():
        got = graph({"x": x})[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gating", ["none", "softmax"])
def test_gradients_follow_the_gating(gating: str) -> None:
    ex, rw, rb = random_experts(16, 6, 8, gated=False, seed=2)
    graph = TorchGraph(moe_model((2, 16), ex, rw, rb, 2, "gelu", gating))
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    outputs, extra = graph.run({"x": x}, capture=[n for pair in graph.router_points for n in pair])
    outputs[0].square().sum().backward()
    grads = {name: graph.params[key].grad for name, key in graph.param_key.items()}
    for name in ("w1", "b1", "w2", "b2"):
        assert grads[name] is not None and grads[name].abs().sum() > 0
    # Experts no token chose get no gradient; the top-k choice passes none to the router, the
    # softmax over the chosen logits does.
    chosen = set(torch.topk(torch.from_numpy(x) @ torch.from_numpy(rw) + torch.from_numpy(rb), 2).indices.reshape(-1).tolist())
    assert len(chosen) <= 4
    for e in set(range(6)) - chosen:
        assert grads["w1"][e].abs().sum() == 0 and grads["w2"][e].abs().sum() == 0
    router_grad = grads["router_weight"]
    assert (router_grad is not None and router_grad.abs().sum() > 0) == (gating == "softmax")
    (logits, mass), = [(extra[a], extra[b]) for a, b in graph.router_points]
    assert logits.shape == mass.shape == (2, 6) and not mass.requires_grad and (mass >= 0).all()
