"""Small real models the fuzz targets start from (deterministic weights)."""

from __future__ import annotations

import functools

import onnx
import onnx.parser
import onnx_ir as ir

from sparsec.testing import seeded

MLP_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
mlp (float[N,64] x) => (float[N,16] y) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""

CNN_TEXT = """
<ir_version: 9, opset_import: ["" : 17]>
cnn (float[1,3,8,8] x) => (float[1,10] y) {
  c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, cw, cb)
  r = Relu(c)
  p = GlobalAveragePool(r)
  f = Flatten(p)
  y = Gemm <transB = 1> (f, fw, fb)
}
"""


@functools.cache
def mlp_proto() -> onnx.ModelProto:
    """Gemm(transB) -> Relu -> MatMul; 64 -> 64 -> 16 (weights large enough to be pruned)."""
    proto = onnx.parser.parse_model(MLP_TEXT)
    for name, shape, seed in (("w1", (64, 64), 1), ("b1", (64,), 2), ("w2", (64, 16), 3)):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(seeded(shape, seed), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


@functools.cache
def cnn_proto() -> onnx.ModelProto:
    proto = onnx.parser.parse_model(CNN_TEXT)
    for name, shape, seed in (("cw", (32, 3, 3, 3), 4), ("cb", (32,), 5), ("fw", (10, 32), 6), ("fb", (10,), 7)):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(seeded(shape, seed), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def tiny_mlp() -> ir.Model:
    """A fresh IR copy of `mlp_proto` (passes rewrite models in place)."""
    return ir.serde.deserialize_model(mlp_proto())
