"""The sparsify / nm-sparsity / layer-sensitivity / allocate passes on a tiny MLP."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.metrics import cosine_damage
from sparsec.dialect import verify_node
from sparsec.errors import OptionError, PipelineError
from sparsec.layer_view import view_of
from sparsec.layers import find_layers
from sparsec.numerics import evaluate
from sparsec.passes.analysis.layer_stats import layer_stages
from sparsec.pm import PassContext, PassManager, parse_pipeline


def _damage(before: ir.Model, after: ir.Model, x: np.ndarray) -> float:
    return cosine_damage(evaluate(before, {"x": x}), evaluate(after, {"x": x}))


def _run(model: ir.Model, text: str, calib) -> PassContext:  # noqa: ANN001
    ctx = PassContext(calibration=calib)
    PassManager(parse_pipeline(text)).run(model, ctx)
    return ctx


def test_stages_follow_dependencies(mlp) -> None:  # noqa: ANN001
    stages = layer_stages(mlp, [view_of(layer) for layer in find_layers(mlp)])
    assert [[v.layer.weight.name for v in s] for s in stages] == [["w1"], ["w2"], ["w3"]]


@pytest.mark.parametrize("pattern", ["2:4", "u:0.7", "b4x4:0.5"])
def test_criteria_rank_end_to_end(mlp, mlp_calib, correlated, pattern: str) -> None:  # noqa: ANN001
    x = correlated(128, 32, seed=99)  # held-out inputs from the same distribution
    damage = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        model = mlp.clone()
        _run(model, f"sparsify{{pattern={pattern} criterion={criterion} min_params=1}}", mlp_calib)
        damage[criterion] = _damage(mlp, model, x)
        markers = [n for n in model.graph if n.domain == "com.sparsec"]
        assert len(markers) == 3 and all(not verify_node(n) for n in markers)
    assert damage["sparsegpt"] < damage["magnitude"], damage
    assert damage["sparsegpt"] < 0.7 * damage["magnitude"], damage


def test_nm_sparsity_criterion_needs_calibration(mlp) -> None:  # noqa: ANN001
    with pytest.raises(OptionError, match="needs calibration data"):
        _run(mlp, "nm-sparsity{criterion=wanda min_params=1}", None)
    with pytest.raises(PipelineError, match="unknown criterion 'obs'"):
        parse_pipeline("nm-sparsity{criterion=obs}")


def test_nm_sparsity_sparsegpt_records_decisions(mlp, mlp_calib) -> None:  # noqa: ANN001
    ctx = _run(mlp, "nm-sparsity{criterion=sparsegpt min_params=1}", mlp_calib)
    records = [d for d in ctx.decisions if d["pass"] == "nm-sparsity"]
    assert [r["decision"] for r in records] == ["2:4"] * 3
    assert all(r["criterion"] == "sparsegpt" and 0 < r["output_rel_error"] < 1 for r in records)


def test_sparse_marker_verifier_rejects_too_dense(mlp, mlp_calib) -> None:  # noqa: ANN001
    _run(mlp, "sparsify{pattern=u:0.5 min_params=1}", mlp_calib)
    marker = next(n for n in mlp.graph if n.op_type == "Sparse")
    assert verify_node(marker) == []
    weight = marker.inputs[0]
    weight.const_value = ir.tensor(np.ones(weight.const_value.shape, np.float32), name=weight.name)
    problems = verify_node(marker)
    assert problems and "more than density=0.5" in problems[0]


def test_allocate_meets_sparsity_budget(mlp, mlp_calib) -> None:  # noqa: ANN001
    ctx = _run(
        mlp,
        "allocate{target=sparsity budget=0.6 candidates=[u:0.25,u:0.5,u:0.75,u:0.9] criterion=wanda min_params=1}",
        mlp_calib,
    )
    layers = find_layers(mlp)
    total = sum(layer.weight.const_value.size for layer in layers)
    zeros = sum(int((layer.weight.const_value.numpy() == 0).sum()) for layer in layers)
    assert zeros / total >= 0.6 - 0.01
    chosen = [d for d in ctx.decisions if d["pass"] == "allocate"]
    assert len(chosen) == 3 and all("why" in d and "sensitivity" in d for d in chosen)


def test_allocate_meets_fidelity_floor(mlp, mlp_calib, correlated) -> None:  # noqa: ANN001
    dense = mlp.clone()
    ctx = PassContext(calibration=mlp_calib)
    records = PassManager(parse_pipeline("allocate{min_fidelity=0.98 criterion=sparsegpt min_params=1}")).run(mlp, ctx)
    stats = records[0].stats
    assert stats["measured_fidelity"] >= 0.98, stats
    assert stats["layers_sparse"] >= 1, stats  # the floor leaves room for some N:M layers
    assert "predicted_speedup" in stats
    assert 1 - _damage(dense, mlp, correlated(128, 32, seed=99)) > 0.97
