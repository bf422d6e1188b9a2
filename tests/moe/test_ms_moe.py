"""ONNX Runtime's contrib op `com.microsoft.MoE`: lifted to `com.sparsec.MoE` where its
semantics map (the lifted, reference-lowered graph equals ORT's own run of the op), reported
as a miss with the reason where they do not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsec.dialect import DOMAIN
from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes
from sparsec.passes.moe.ms_moe import find_ms_moe
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager
from sparsec.pm.pipeline import parse_pipeline

D, E, F, K = 16, 4, 24, 2


def _ms_model(activation: str = "silu", normalize: int = 0, fc2_bias: str = "zero", sparse_mixer: int = 0,
              router: str = "matmul", **swiglu: float) -> onnx.ModelProto:
    """x [T, D] -> MatMul router -> com.microsoft.MoE (fc1 with bias) -> + x. swiglu: fc1 holds
    gate and up interleaved (swiglu_fusion=1, the form ORT's CPU kernel runs), up bias zero."""
    rng = np.random.default_rng(0)
    b2 = {"zero": np.zeros((E, D)), "same": np.tile(rng.standard_normal(D), (E, 1)), "per": rng.standard_normal((E, D))}[fc2_bias]
    rows = 2 * F if activation == "swiglu" else F
    b1 = rng.standard_normal((E, rows))
    if activation == "swiglu":
        b1[:, 1::2] = 0.0
        swiglu = {"swiglu_fusion": 1, **swiglu}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("wr", rng.standard_normal((D, E))), ("fc1", rng.standard_normal((E, rows, D)) / 4), ("b1", b1),
        ("fc2", rng.standard_normal((E, D, F)) / 4), ("b2", b2))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", D])]
    nodes = []
    if router == "matmul":
        nodes.append(helper.make_node("MatMul", ["x", "wr"], ["r"], name="router"))
    else:  # router_probs fed from outside
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["T", E]))
    nodes += [helper.make_node("MoE", ["x", "r", "fc1", "b1", "fc2", "b2"], ["m"], domain="com.microsoft", name="ms_moe", k=K,
                               activation_type=activation, normalize_routing_weights=normalize, use_sparse_mixer=sparse_mixer,
                               **swiglu),
              helper.make_node("Add", ["m", "x"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _lift(proto: onnx.ModelProto) -> tuple[ir.Model, PassContext]:
    model, ctx = ir.from_proto(proto), PassContext()
    PassManager(parse_pipeline("lift-moe")).run(model, ctx)
    return model, ctx


@pytest.mark.parametrize(("activation", "normalize", "fc2_bias", "gating"),
                         [("relu", 1, "zero", "softmax"), ("gelu", 1, "same", "softmax"), ("silu", 0, "zero", "softmax_all"),
                          ("swiglu", 1, "zero", "softmax")])
def test_lifted_op_equals_ort_run(activation: str, normalize: int, fc2_bias: str, gating: str) -> None:
    proto = _ms_model(activation, normalize, fc2_bias)
    model, ctx = _lift(proto)
    nodes = [n for n in model.graph if n.domain == DOMAIN and n.op_type == "MoE"]
    assert len(nodes) == 1 and not any(n.domain == "com.microsoft" for n in model.graph)
    assert nodes[0].attributes["gating"].as_string() == gating and nodes[0].attributes["top_k"].as_int() == K
    (lift,) = [d for d in ctx.decisions if d["decision"] == "lift"]
    want_act = {"gelu": {"gelu", "gelu_tanh"}, "swiglu": {"silu"}}.get(activation, {activation})
    assert lift["match_rel_l2"] < 1e-4 and lift["activation"] in want_act
    assert (len(nodes[0].inputs) > 7 and nodes[0].inputs[7] is not None) == (activation == "swiglu")  # gated: w_up
    lower_to_reference(model)
    x = np.random.default_rng(5).standard_normal((33, D)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("change", "reason"), [
    (dict(sparse_mixer=1), "use_sparse_mixer=1"),
    (dict(fc2_bias="per"), "fc2_experts_bias differs per expert"),
    (dict(fc2_bias="same", normalize=0), "fc2_experts_bias differs per expert"),  # weights sum to < 1: not once
    (dict(activation="identity"), "activation_type 'identity'"),
    (dict(router="input"), "router_probs is not a MatMul / Gemm"),
    (dict(activation="swiglu", activation_alpha=1.702, activation_beta=1.0, swiglu_limit=7.0), "swiglu_limit clamp"),
], ids=["sparse-mixer", "per-expert-bias", "bias-unnormalised", "identity", "no-router", "clamped-swiglu"])
def test_misses_keep_their_reason(change: dict, reason: str) -> None:
    proto = _ms_model(**change)
    blocks, misses = find_ms_moe(ir.from_proto(proto))
    assert not blocks and len(misses) == 1 and reason in misses[0].reason
    model, ctx = _lift(proto)
    assert [n.op_type for n in model.graph if n.domain == "com.microsoft"] == ["MoE"]  # left as it is
    (skip,) = [d for d in ctx.decisions if d["pass"] == "lift-moe"]
    assert skip["decision"] == "skip" and reason in skip["reason"]
