"""nm-sparsity as Before/Expected IR, on every weight layout it understands, and its skips."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.layers import find_layers
from sparsec.nm_pattern import nm_violations
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import graph_text, make_model, seeded


def run(model, text: str) -> PassContext:
    ctx = PassContext()
    PassManager(parse_pipeline(text)).run(model, ctx)
    return ctx


def test_before_expected_ir(mlp) -> None:
    before = graph_text(mlp)
    run(mlp, "nm-sparsity{n=1 m=4 min_params=0}")
    after = graph_text(mlp)
    # The weights keep their names (state_dict keys); markers sit between them and their users.
    expected_nodes = (
        "  %w1__nm1_4 = com.sparsec.NMSparse<axis=1, m=4, n=1>(%w1)\n"
        "  %h = Gemm<transB=1>(%x, %w1__nm1_4, %b1)\n"
        "  %r = Relu(%h)\n"
        "  %w2__nm1_4 = com.sparsec.NMSparse<axis=0, m=4, n=1>(%w2)\n"
        "  %y = MatMul(%r, %w2__nm1_4)\n"
    )
    assert expected_nodes in after
    assert before.replace("  %h = Gemm", "") != after
    w1 = mlp.graph.initializers["w1"].const_value.numpy()
    assert nm_violations(w1, 1, 4, axis=1) == 0 and np.count_nonzero(w1) == w1.size // 4


def test_records_decisions_per_layer(mlp) -> None:
    ctx = run(mlp, "nm-sparsity{min_params=0}")
    assert [(d["weight"], d["decision"], d["axis"]) for d in ctx.decisions] == [("w1", "2:4", 1), ("w2", "2:4", 0)]


def test_conv_weights_and_depthwise_skip() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    cnn (float[1,8,6,6] x) => (float[1,16,6,6] y) {
      d = Conv <group = 8, pads = [1,1,1,1]> (x, wd)
      y = Conv <pads = [1,1,1,1]> (d, wc)
    }"""
    model = make_model(text, wd=seeded((8, 1, 3, 3)), wc=seeded((16, 8, 3, 3), 1))
    ctx = run(model, "nm-sparsity{min_params=0}")
    assert nm_violations(model.graph.initializers["wc"].const_value.numpy(), 2, 4, axis=1) == 0
    skip = {d["weight"]: d["reason"] for d in ctx.decisions if d["decision"] == "skip"}
    assert "wd" in skip and ("depthwise" in skip["wd"] or "multiple" in skip["wd"])


def test_weight_behind_transpose_maps_the_axis() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2,3,16] x) => (float[2,3,8] y) {
      wt = Transpose <perm = [1,0]> (w)
      y = MatMul(x, wt)
    }"""
    model = make_model(text, w=seeded((8, 16)))
    (layer,) = find_layers(model)
    assert layer.weight.name == "w" and layer.reduction_axis == 1
    run(model, "nm-sparsity{min_params=0}")
    assert nm_violations(model.graph.initializers["w"].const_value.numpy(), 2, 4, axis=1) == 0


@pytest.mark.parametrize(
    ("text", "weights", "reason"),
    [
        ("y = MatMul(x, w)", {"w": seeded((16, 8))}, "parameters < min_params"),
        ("y = MatMul(x, w)\n z = Add(w, w)", {"w": seeded((16, 8))}, "shared"),
    ],
)
def test_skips_with_reasons(text, weights, reason) -> None:
    outs = "float[1,8] y" + (", float[16,8] z" if "z =" in text else "")
    model = make_model(
        f'<ir_version: 10, opset_import: ["" : 18]>\ng (float[1,16] x) => ({outs}) {{ {text} }}', **weights
    )
    min_params = 1024 if "min_params" in reason else 0
    ctx = run(model, f"nm-sparsity{{min_params={min_params}}}")
    assert any(reason in d.get("reason", "") for d in ctx.decisions), ctx.decisions


def test_reduction_dim_not_multiple_of_m_is_skipped() -> None:
    model = make_model(
        '<ir_version: 10, opset_import: ["" : 18]>\ng (float[1,12] x) => (float[1,8] y) { y = MatMul(x, w) }',
        w=seeded((12, 8)),
    )
    ctx = run(model, "nm-sparsity{n=1 m=8 min_params=0}")
    assert "not a multiple of m=8" in ctx.decisions[0]["reason"]


def test_include_and_exclude_globs(mlp) -> None:
    ctx = run(mlp, "nm-sparsity{min_params=0 exclude=[w2]}")
    assert sorted((d["weight"], d["decision"]) for d in ctx.decisions) == [("w1", "2:4"), ("w2", "skip")]
    assert next(d for d in ctx.decisions if d["weight"] == "w2")["reason"] == "excluded by exclude glob 'w2'"  # every layer has a decision
    ctx = run(mlp, "nm-sparsity{min_params=0 include=[w2] op_types=[MatMul]}")
    assert [(d["weight"], d["decision"]) for d in ctx.decisions] == [("w2", "2:4")]
    ctx = run(mlp, "nm-sparsity{min_params=0 include=[w2]}")
    assert "not selected by include=['w2']" in ctx.decisions[0]["reason"]
