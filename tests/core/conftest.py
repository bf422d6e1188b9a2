from __future__ import annotations

import numpy as np
import pytest

from sparsec.testing import make_model, seeded

MLP_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
mlp (float[N,16] x) => (float[N,8] y) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


@pytest.fixture
def mlp():
    """Gemm(transB) -> Relu -> MatMul with deterministic weights."""
    return make_model(MLP_TEXT, w1=seeded((32, 16), 1), b1=seeded((32,), 2), w2=seeded((32, 8), 3))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
