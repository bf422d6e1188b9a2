"""Crop reconstruction: refitting the consumers of cropped channels brings the outputs back."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.pm import PassContext, PassManager, parse_pipeline

from .conftest import correlated


def _crop(model, calib, reconstruct: bool):  # noqa: ANN001, ANN202
    m = model.clone()
    ctx = PassContext(calibration=calib)
    text = f"crop-channels{{ratio=0.5 multiple=1 reconstruct={'true' if reconstruct else 'false'}}}"
    records = PassManager(parse_pipeline(text), verify_numerics=False).run(m, ctx)
    return m, records[-1].stats, ctx.decisions


def test_reconstruction_improves_held_out_fidelity(mlp, mlp_calib):  # noqa: ANN001
    held = CalibrationData({"x": correlated(128, 16, seed=7)}, batch_size=32)
    dense = run_outputs(mlp, held)
    plain, stats_plain, _ = _crop(mlp, mlp_calib, reconstruct=False)
    fitted, stats, decisions = _crop(mlp, mlp_calib, reconstruct=True)
    assert stats_plain["reconstruction"] == "off"
    assert stats["layers_reconstructed"] == 1
    assert fitted.graph.initializers["w2"].const_value.shape == plain.graph.initializers["w2"].const_value.shape == (32, 8)
    before, after = mean_cosine(dense, run_outputs(plain, held)), mean_cosine(dense, run_outputs(fitted, held))
    assert after > before + 0.01, (before, after)
    refit = next(d for d in decisions if d.get("decision") == "reconstruct")
    assert refit["weight"] == "w2" and refit["bias"] == "b2" and refit["rel_error_after"] < refit["rel_error_before"]


def test_without_calibration_data_it_is_recorded_off(mlp):  # noqa: ANN001
    m = mlp.clone()
    records = PassManager(parse_pipeline("crop-channels{ratio=0.5 multiple=1}"), verify_numerics=False).run(m, PassContext())
    assert records[-1].stats["reconstruction"] == "off: no calibration data"


def test_damp_must_not_be_negative():
    from sparsec.errors import PipelineError

    with pytest.raises(PipelineError, match="reconstruct_damp"):
        parse_pipeline("crop-channels{ratio=0.5 reconstruct_damp=-0.1}")
    parse_pipeline("crop-channels{ratio=0.5 reconstruct_damp=0}")  # 0: cross-validated


def _folds(rows: int, noise: float):  # noqa: ANN202
    from sparsec.passes.structural.reconstruct import _Fold

    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 4))
    folds = [_Fold(24, 4), _Fold(24, 4)]
    for i in range(8):
        x = rng.standard_normal((rows, 24)) * np.linspace(0.05, 1, 24)
        y = x @ w + noise * rng.standard_normal((rows, 4))
        folds[i % 2].add(x.T @ x, x.T @ y, float((y**2).sum()))
    return folds


def test_cross_validation_damps_noisy_few_rows_more_than_clean_many():
    from sparsec.passes.structural.reconstruct import DAMP_GRID, _cross_validated_damp

    clean, noisy = _cross_validated_damp(_folds(400, 0.01)), _cross_validated_damp(_folds(4, 3.0))
    assert clean == DAMP_GRID[0] and noisy >= 0.1, (clean, noisy)


def test_auto_damp_is_recorded_per_layer(mlp, mlp_calib):  # noqa: ANN001
    from sparsec.passes.structural.reconstruct import DAMP_GRID

    m = mlp.clone()
    ctx = PassContext(calibration=mlp_calib)
    PassManager(parse_pipeline("crop-channels{ratio=0.5 multiple=1 reconstruct_damp=0}"), verify_numerics=False).run(m, ctx)
    refit = next(d for d in ctx.decisions if d.get("decision") == "reconstruct")
    assert refit["damp"] in DAMP_GRID
