"""Shared tiny models and calibration data for the quality tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.testing import make_model

MLP_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
mlp (float[N, 32] x) => (float[N, 16] y) {
    h = MatMul(x, w1)
    r = Relu(h)
    h2 = MatMul(r, w2)
    r2 = Relu(h2)
    y = MatMul(r2, w3)
}
"""


def correlated_inputs(n: int, k: int, seed: int) -> np.ndarray:
    """Inputs with strongly correlated, unequally scaled features (as real activations are)."""
    fixed = np.random.default_rng(12345)  # one distribution; `seed` only draws the samples
    mix = fixed.standard_normal((k, k)) * (fixed.random(k) ** 3)[None, :]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) @ mix + 0.1 * rng.standard_normal((n, k))).astype(np.float32)


def build_mlp(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    return make_model(
        MLP_TEXT,
        w1=(rng.standard_normal((32, 64)) / 6).astype(np.float32),
        w2=(rng.standard_normal((64, 64)) / 8).astype(np.float32),
        w3=(rng.standard_normal((64, 16)) / 8).astype(np.float32),
    )


@pytest.fixture
def mlp() -> ir.Model:
    return build_mlp()


@pytest.fixture
def mlp_calib() -> CalibrationData:
    return CalibrationData({"x": correlated_inputs(256, 32, seed=1)}, batch_size=64)


@pytest.fixture
def correlated():  # noqa: ANN201  (the helper function, for tests that build their own problems)
    return correlated_inputs
