"""The crop-channels pass: planning, records, verifier, pipeline and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsec.errors import OptionError, PipelineError
from sparsec.ir.io import save_model
from sparsec.passes.analysis.dependency_groups import dependency_groups
from sparsec.passes.structural.crop_channels import CropChannels, check_shapes
from sparsec.passes.structural.ratios import round_keep
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager
from sparsec.pm.presets import preset_pipeline
from sparsec.testing import make_model, seeded

from .conftest import copy

H = '<ir_version: 10, opset_import: ["" : 18]>'
CNN = H + """
g (float[N,3,8,8] x) => (float[N,4] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1, b1)
  an = BatchNormalization (a, s1, t1, m1, v1)
  r = Relu (an)
  c = Conv <pads=[1,1,1,1]> (r, w2)
  s = Add (c, a)
  p = GlobalAveragePool (s)
  f = Flatten (p)
  h = Gemm <transB=1> (f, w3, b3)
  hr = Relu (h)
  y = Gemm <transB=1> (hr, w4)
}"""


def cnn():  # noqa: ANN201
    return make_model(
        CNN,
        w1=seeded((64, 3, 3, 3), 1), b1=seeded((64,), 2), s1=seeded((64,), 3), t1=seeded((64,), 4),
        m1=seeded((64,), 5), v1=np.abs(seeded((64,), 6)) + 1, w2=seeded((64, 64, 3, 3), 7),
        w3=seeded((96, 64), 8), b3=seeded((96,), 9), w4=seeded((4, 96), 10),
    )


def test_round_keep_never_removes_all_channels() -> None:
    dg = dependency_groups(cnn(), multiple=16)
    for g in dg.prunable_groups():
        assert g.multiple == 16
        assert round_keep(g, 0.0) == 16
        assert round_keep(g, 0.01) == 16
        assert round_keep(g, 1.0) == g.size
        assert round_keep(g, 0.6) % 16 == 0


def test_crop_ratio_records_removed_indices_per_parameter() -> None:
    m = cnn()
    ctx = PassContext()
    records = PassManager([CropChannels(ratio=0.5)]).run(m, ctx)
    assert records[0].changed and records[0].stats["groups_cropped"] == 2
    assert m.graph.initializers["w1"].const_value.shape == (32, 3, 3, 3)
    assert m.graph.initializers["w2"].const_value.shape == (32, 32, 3, 3)
    assert m.graph.initializers["w3"].const_value.shape == (48, 32)
    assert m.graph.initializers["w4"].const_value.shape == (4, 48)
    per_param = {(d["param"], d["axis"]): d["removed"] for d in ctx.decisions if "param" in d}
    assert len(per_param[("w1", 0)]) == 32 and per_param[("w1", 0)] == per_param[("w2", 1)]
    assert per_param[("v1", 0)] == per_param[("w1", 0)]
    groups = [d for d in ctx.decisions if "group" in d]
    assert sorted(d["kept"] for d in groups) == [32, 48]
    # the removed channels are the lowest-L2 ones of the group
    assert check_shapes(m, {}) == []


def test_crop_macs_meets_the_target_and_uniform_differs_from_budget() -> None:
    for allocation in ("uniform", "budget", "precrop"):
        m = cnn()
        result = CropChannels(macs=0.5, allocation=allocation).run(m, PassContext())
        assert result.stats["macs_after"] <= 0.5 * result.stats["macs_before"], allocation


def test_latency_cost_bounds_the_predicted_latency() -> None:
    m = cnn()
    stats = CropChannels(macs=0.4, cost="latency", allocation="budget").run(m, PassContext()).stats
    assert stats["predicted_ms_after"] <= 0.6 * stats["predicted_ms_before"]
    assert stats["macs_after"] < stats["macs_before"]


def test_layer_ratios_override_and_exclude() -> None:
    m = cnn()
    ctx = PassContext()
    CropChannels(ratio=0.5, layer_ratios=("w3=0.25",), exclude=("w1",)).run(m, ctx)
    assert m.graph.initializers["w1"].const_value.shape[0] == 64
    assert m.graph.initializers["w3"].const_value.shape[0] == 32  # 96 * 0.25 rounded to 16


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(PipelineError):
        CropChannels(macs=1.5)
    with pytest.raises(PipelineError):
        CropChannels(allocation="random")
    with pytest.raises(PipelineError):
        CropChannels(layer_ratios=("w3",))
    with pytest.raises(PipelineError):
        CropChannels(cost="energy")
    with pytest.raises(PipelineError, match="calibration"):
        CropChannels(macs=0.5, allocation="sensitivity").run(cnn(), PassContext())


def test_verifier_catches_inconsistent_shapes() -> None:
    m = cnn()
    CropChannels(ratio=0.5).run(m, PassContext())
    broken = copy(m)
    w2 = broken.graph.initializers["w2"]
    import onnx_ir as ir

    w2.const_value = ir.tensor(np.zeros((32, 48, 3, 3), np.float32), name="w2")
    assert check_shapes(broken, {}) != []


def test_calibration_criterion_and_sensitivity_run() -> None:
    from sparsec.calib.data import CalibrationData

    calib = CalibrationData({"x": seeded((32, 3, 8, 8), 11)}, batch_size=16)
    for kw in ({"criterion": "activation"}, {"allocation": "sensitivity"}, {"allocation": "sensitivity", "damage": "kl"}):
        m = cnn()
        ctx = PassContext(calibration=calib)
        result = CropChannels(macs=0.4, **kw).run(m, ctx)
        assert result.stats["macs_after"] <= 0.6 * result.stats["macs_before"], kw


def test_preset_puts_the_crop_before_nm_sparsity() -> None:
    text = preset_pipeline(crop=0.5, sparsity="2:4").to_text()
    assert text.index("crop-channels{macs=0.5}") < text.index("nm-sparsity")
    assert "crop-channels{ratio=0.25}" in preset_pipeline(crop_ratio=0.25, sparsity="none").to_text()
    with pytest.raises(OptionError):
        preset_pipeline(crop=0.5, crop_ratio=0.5)
    with pytest.raises(OptionError):
        preset_pipeline(crop=1.0)


def test_cli_compile_with_crop_and_sparsity(tmp_path: Path) -> None:
    model_path = tmp_path / "cnn.onnx"
    save_model(cnn(), model_path)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sparsec.cli", "compile", str(model_path), "--crop=0.5", "--sparsity=2:4", "--no-bench", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"].startswith("crop-channels{macs=0.5")
    crop = manifest["passes"][0]
    assert crop["stats"]["macs_after"] <= crop["stats"]["macs_before"] / 2
    assert any(d["pass"] == "crop-channels" and d.get("param") == "w1" for d in manifest["decisions"])
    assert "crop.png" in manifest["files"] and (out / "crop.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "## Channel crops" in report and "| w1[0] | 64 | 32 |" in report
    bad = subprocess.run(
        [sys.executable, "-m", "sparsec.cli", "compile", str(model_path), "--crop=2", "-o", str(tmp_path / "o2")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--crop=2" in bad.stderr


def test_activation_criterion_honours_the_allocation() -> None:
    """criterion=activation with allocation=budget/precrop allocates with those rules on the
    activation scores (it used to fall back to uniform silently)."""
    from sparsec.calib.data import CalibrationData
    from sparsec.passes.structural.calibrated import activation_scores, calibration_of
    from sparsec.passes.structural.ratios import budget_keeps

    calib = CalibrationData({"x": seeded((32, 3, 8, 8), 11)}, batch_size=16)
    plans = {}
    for allocation in ("uniform", "budget", "precrop"):
        m, ctx = cnn(), PassContext(calibration=calib)
        p = CropChannels(macs=0.5, criterion="activation", allocation=allocation)
        dg = p.analyse(m, ctx)
        plans[allocation] = p.allocate(m, dg, ctx)[1]
        if allocation == "budget":
            scores = activation_scores(dg, m, calibration_of(ctx))
            assert plans[allocation] == budget_keeps(dg, p.candidates(dg, set()), scores, int(dg.macs() * 0.5), {})
    assert plans["budget"] != plans["uniform"]
