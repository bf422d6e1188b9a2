"""sparsec.testing.mlp_model builds the same model as the ONNX text the tests used to write out."""

from __future__ import annotations

from sparsec.ir.io import to_proto
from sparsec.testing import make_model, mlp_model, seeded

THREE_LAYERS = """
<ir_version: 10, opset_import: ["" : 18]>
mlp (float[N, 32] x) => (float[N, 16] y) {
    h = Gemm <transB = 1> (x, w1, b1)
    r = Relu(h)
    h2 = MatMul(r, w2)
    r2 = Relu(h2)
    y = MatMul(r2, w3)
}
"""

TWO_MATMULS = """
<ir_version: 10, opset_import: ["" : 18]>
two (float[4,64] x) => (float[4,32] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _bytes(model) -> bytes:  # noqa: ANN001
    return to_proto(model).SerializeToString()


def test_gemm_first_three_layers_match_the_text() -> None:
    want = make_model(THREE_LAYERS, w1=seeded((64, 32), 1), b1=seeded((64,), 2), w2=seeded((64, 64), 3), w3=seeded((64, 16), 4))
    assert _bytes(mlp_model("N", (32, 64, 64, 16), gemm_first=True)) == _bytes(want)


def test_matmul_only_two_layers_match_the_text() -> None:
    want = make_model(TWO_MATMULS, w1=seeded((64, 64), 1), w2=seeded((64, 32), 2))
    assert _bytes(mlp_model(4, (64, 64, 32), name="two")) == _bytes(want)
    assert _bytes(mlp_model(4, (64, 64, 32), name="two", gemm_first=True)) != _bytes(want)
