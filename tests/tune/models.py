"""Small models for the tuner tests (imported, not a conftest)."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from sparsec.ir.io import save_model
from sparsec.testing import make_model, seeded

TWO_LAYERS = """
<ir_version: 10, opset_import: ["" : 18]>
two (float[ROWS,256] x) => (float[ROWS,256] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def two_layers(rows: int = 1) -> ir.Model:
    """x[rows, 256] -> 256x256 MatMul -> Relu -> 256x256 MatMul: two layers of one shape."""
    return make_model(TWO_LAYERS.replace("ROWS", str(rows)), w1=seeded((256, 256), 1), w2=seeded((256, 256), 2))


def write_two_layers(folder: Path, rows: int = 1) -> Path:
    path = folder / "two.onnx"
    save_model(two_layers(rows), path)
    return path
