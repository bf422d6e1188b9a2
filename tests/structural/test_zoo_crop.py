"""Crops of zoo models: every family at 30% and 50% fewer MACs, verified, run in ORT, with the
zero-channel equivalence; and a replay of the recorded crop on the torch module."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from sparsec.ir.io import to_proto
from sparsec.numerics import evaluate, sample_inputs
from sparsec.passes.analysis.cost_model import estimate_costs
from sparsec.passes.analysis.dependency_groups import dependency_groups
from sparsec.passes.structural.crop_channels import CropChannels
from sparsec.passes.structural.replay import crop_module
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager

from .conftest import assert_zero_equivalence

FAMILIES = ["resnet", "mobilenet", "efficientnet", "densenet", "shufflenet", "convnext", "vit", "bert", "gpt", "gpt_gqa"]


def export(name: str) -> ir.Model:
    from sparsec.models_zoo import cached_export_ir

    return cached_export_ir(name)


def crop_and_check(model: ir.Model, target: float) -> None:
    copy = ir.serde.deserialize_model(to_proto(model))
    before = estimate_costs(copy).total("macs")
    PassManager([CropChannels(macs=target)], verify_each=True).run(copy, PassContext())
    after = estimate_costs(copy).total("macs")
    assert after <= (1 - target) * before
    outputs = evaluate(copy, sample_inputs(copy))
    assert all(np.isfinite(o).all() for o in outputs)
    dg = dependency_groups(model, multiple=16)
    removed, _ = CropChannels(macs=target).plan(model, dg, PassContext())
    for g in dg.groups:
        if g.lossy:
            removed[g.classes] = False
    assert removed.any()
    assert_zero_equivalence(model, dg, removed)


def test_digits_cnn_crops() -> None:
    m = export("digits_cnn")
    for target in (0.3, 0.5):
        crop_and_check(m, target)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_crops_at_30_and_50_percent(name: str) -> None:
    m = export(name)
    for target in (0.3, 0.5):
        crop_and_check(m, target)


@pytest.mark.parametrize("name", ["digits_cnn", "resnet"])
def test_replayed_crop_on_the_torch_module_matches_the_cropped_model(name: str) -> None:
    from sparsec.models_zoo import get

    entry = get(name)
    model = export(name)
    ctx = PassContext()
    CropChannels(macs=0.5).run(model, ctx)
    module = crop_module(entry.build(), ctx.decisions)
    (x,) = entry.example_inputs(2)
    with torch.no_grad():
        expected = module(x).numpy()
    got = evaluate(model, {entry.input_names[0]: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
