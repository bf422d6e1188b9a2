"""The crop plan review (issue 9, B.3): per group MACs saved and damage, refusals with a
reason, and no crop (with a warning saying how much could go) where little can be cropped."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import compare
from sparsec.capture import from_onnx
from sparsec.numerics import evaluate, sample_inputs
from sparsec.passes.analysis.dependency_groups import dependency_groups
from sparsec.passes.structural.crop_channels import CropChannels
from sparsec.passes.structural.crop_plan import (
    MEASURED_METRIC,
    PROXY_METRIC,
    possible_removal,
    review_plan,
)
from sparsec.passes.structural.crop_report import crop_table
from sparsec.passes.structural.importance import importance
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager

from .conftest import copy


@pytest.fixture(scope="module")
def mlp():  # noqa: ANN201
    from sparsec.models_zoo import cached_export_ir

    return cached_export_ir("mlp")


def _plan(model, dg, keep: int):  # noqa: ANN001, ANN202
    """Remove all but `keep` channels of every prunable group (lowest l2 first)."""
    scores = importance(dg, model, "l2")
    removed = np.zeros(dg.n_channels, dtype=bool)
    keeps = {}
    for g in dg.prunable_groups():
        order = np.argsort(scores[g.classes], kind="stable")
        removed[g.classes[order[: g.size - keep]]] = True
        keeps[g.id] = keep
    return removed, keeps, scores


def test_review_reports_saving_and_damage_and_refuses_negligible_groups(mlp) -> None:
    dg = dependency_groups(mlp, multiple=16)
    removed, keeps, scores = _plan(mlp, dg, 512)
    review = review_plan(mlp, dg, dg.prunable_groups(), removed, keeps, scores, PassContext(), asked=0.5,
                         min_group_saving=0.0, max_damage_ratio=0.0)
    assert review.metric == PROXY_METRIC and len(review.groups) == 2 and not review.refused
    for r in review.groups:
        assert 0.0 < r.macs_saved < 0.5 and 0.0 < r.damage < 0.5  # half the channels, the weakest ones
    savings = sorted(r.macs_saved for r in review.groups)
    # A threshold between the two savings refuses exactly the smaller one, with the reason.
    strict = review_plan(mlp, dg, dg.prunable_groups(), removed, keeps, scores, PassContext(), asked=0.5,
                         min_group_saving=(savings[0] + savings[1]) / 2, max_damage_ratio=0.0)
    (refused,) = [r for r in strict.groups if r.refused]
    assert refused.macs_saved == savings[0] and "min_group_saving" in refused.refused
    assert strict.achieved < review.achieved


def test_review_refuses_a_group_whose_damage_per_mac_is_far_worse(mlp) -> None:
    dg = dependency_groups(mlp, multiple=16)
    removed, keeps, scores = _plan(mlp, dg, 512)
    first, second = dg.prunable_groups()
    # Make the first group's removed channels carry almost all of its importance.
    scores = scores.copy()
    gone = first.classes[removed[first.classes]]
    scores[first.classes] = 1e-6
    scores[gone] = 1.0
    scores[second.classes] = 1.0
    scores[second.classes[removed[second.classes]]] = 1e-3
    review = review_plan(mlp, dg, [first, second, *dg.prunable_groups()[2:]], removed, keeps, scores, PassContext(),
                         asked=0.5, min_group_saving=0.0, max_damage_ratio=1.5)
    assert review.refused == {first.id}
    assert "median" in next(r.refused for r in review.groups if r.group == first.id)


def test_calibration_data_gives_measured_damage(mlp) -> None:
    dg = dependency_groups(mlp, multiple=16)
    removed, keeps, scores = _plan(mlp, dg, 512)
    rng = np.random.default_rng(0)
    ctx = PassContext(calibration=CalibrationData({"input": rng.standard_normal((8, 784)).astype(np.float32)}))
    review = review_plan(mlp, dg, dg.prunable_groups(), removed, keeps, scores, ctx, asked=0.5,
                         min_group_saving=0.0, max_damage_ratio=0.0)
    assert review.metric == MEASURED_METRIC
    assert all(0.0 < r.damage < 1.0 for r in review.groups)


def test_crop_on_a_normal_model_keeps_reaching_its_target_and_records_the_review(mlp) -> None:
    model, ctx = copy(mlp), PassContext()
    (record,) = PassManager([CropChannels(macs=0.5)]).run(model, ctx)
    assert record.changed and record.stats["macs_removed_fraction"] >= 0.5 and "warning" not in record.stats
    cropped = [d for d in ctx.decisions if "group" in d]
    assert cropped and all("macs_saved" in d and "damage" in d for d in cropped)
    assert any("MACs saved" in line for line in crop_table(ctx.decisions))


def export_mixtral(path: Path) -> Path:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        experts_implementation="batched_mm",
    )
    torch.manual_seed(0)
    lm = MixtralForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=ids, use_cache=False).logits

    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(), (ids,), dynamo=True, opset_version=18, input_names=["input_ids"], verbose=False).save(path)
    return path


@pytest.mark.slow
def test_mixtral_crop_that_buys_nothing_is_refused_with_a_warning(tmp_path: Path) -> None:
    model = from_onnx(export_mixtral(tmp_path / "mixtral.onnx"))
    feeds = sample_inputs(model)
    dense = evaluate(model, feeds)
    ctx = PassContext()
    refused_model = copy(model)
    (record,) = PassManager([CropChannels(macs=0.5)]).run(refused_model, ctx)
    stats = record.stats
    assert stats["groups_cropped"] == 0 and stats["macs_removed_fraction"] == 0.0
    assert 0.0 < stats["macs_possible"] < 0.1  # the experts and routing are pinned
    assert "at most" in stats["warning"] and "nothing cropped" in stats["warning"]
    refused = [d for d in ctx.decisions if d.get("decision") == "refused"]
    assert refused and all(d["refused"] and "macs_saved" in d and "damage" in d for d in refused)
    assert compare(dense, evaluate(refused_model, feeds)).worst_cosine > 0.999999  # not silently degraded

    # Forced (the review off), the same crop removes a few percent of the MACs and hurts the outputs.
    forced = copy(model)
    (record,) = PassManager([CropChannels(macs=0.5, min_achieved=0.0, min_group_saving=0.0)]).run(forced, PassContext())
    assert record.changed and record.stats["macs_removed_fraction"] < 0.1
    assert "at most" in record.stats["warning"]
    assert compare(dense, evaluate(forced, feeds)).worst_cosine < 0.99
    dg = dependency_groups(model, multiple=16)
    assert possible_removal(dg, dg.prunable_groups()) == pytest.approx(stats["macs_possible"], abs=1e-3)
