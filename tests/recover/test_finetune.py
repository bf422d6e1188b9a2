"""Fine-tuning recovery keeps every mask and N:M pattern and improves held-out fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.errors import OptionError
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.recover.finetune import FinetuneOptions, feature_points, finetune

from .conftest import correlated


def _weights(model):  # noqa: ANN001, ANN202
    return {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items() if n.startswith("w")}


def test_nm_patterns_and_masks_survive_and_fidelity_improves(mlp, mlp_calib):  # noqa: ANN001
    sparse = mlp.clone()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(sparse, PassContext())
    before = _weights(sparse)
    held = CalibrationData({"x": correlated(128, 16, seed=7)}, batch_size=32)
    dense_out = run_outputs(mlp, held)
    cos_before = mean_cosine(dense_out, run_outputs(sparse, held))
    result = finetune(sparse, mlp, mlp_calib, FinetuneOptions(steps=60, lr=3e-3, eval_every=20, progress=False))
    after = _weights(sparse)
    for name, w in after.items():
        assert not np.array_equal(w, before[name])  # trained
        np.testing.assert_array_equal(w[before[name] == 0], 0.0)  # every pruned entry stays zero
        groups = np.moveaxis(w, 0, -1).reshape(-1, 4)  # groups of 4 along the reduction axis (axis 0 of MatMul's B)
        assert (np.count_nonzero(groups, axis=1) <= 2).all()
    assert result.steps_run > 0 and result.losses and result.held_out_curve[0][0] == 0
    assert result.cosine_after >= result.cosine_before
    assert mean_cosine(dense_out, run_outputs(sparse, held)) > cos_before


def test_recover_pass_in_a_pipeline_uses_the_dense_model_as_teacher(mlp, mlp_calib):  # noqa: ANN001
    m = mlp.clone()
    ctx = PassContext(calibration=mlp_calib)
    records = PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1},recover{steps=30 lr=0.003 eval_every=10}"),
                          verify_numerics=False).run(m, ctx)
    stats = records[-1].stats
    assert stats["cosine_after"] >= stats["cosine_before"] and stats["steps_run"] > 0
    record = next(d for d in ctx.decisions if d["pass"] == "recover")
    assert record["losses"] and record["held_out_curve"]


def test_bf16_reaches_the_trainer_from_the_pass_and_the_cli() -> None:
    from sparsec.cli.main import build_parser

    pass_ = parse_pipeline("recover{bf16=true steps=3}").passes[0]
    assert pass_.options_for_finetune().bf16 is True
    assert parse_pipeline("recover{steps=3}").passes[0].options_for_finetune().bf16 is False
    args = build_parser().parse_args(["finetune", "art", "--calib", "c.npz", "--bf16"])
    assert args.bf16 is True
    assert build_parser().parse_args(["finetune", "art", "--calib", "c.npz"]).bf16 is False


def test_feature_points_are_shared_values(hf_models):  # noqa: ANN001
    model = hf_models["bert"]
    sparse = model.clone()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=1}"), verify_numerics=False).run(sparse, PassContext())
    points = feature_points(sparse, model)
    norms = {n.outputs[0].name for n in model.graph if n.op_type == "LayerNormalization"}
    assert points and set(points) <= norms


def test_bad_options_and_too_little_data(mlp):  # noqa: ANN001
    with pytest.raises(OptionError):
        FinetuneOptions(steps=0)
    tiny = CalibrationData({"x": correlated(4, 16, seed=1)}, batch_size=32)
    with pytest.raises(OptionError, match="more calibration samples"):
        finetune(mlp.clone(), mlp, tiny, FinetuneOptions(steps=1, batch_size=16, progress=False))
