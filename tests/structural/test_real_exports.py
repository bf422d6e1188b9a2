"""Crops of models as real exporters write them: torchvision's ShuffleNetV2 x1.0 and ViT-B/16
structures through the dynamo exporter (with and without its optimizer) and the legacy
exporter, opset 17, from ONNX files. Each crop at 50% fewer MACs must pass verification,
run in ONNX Runtime and be exact on zeroed channels (issue 9, B.2: these crashed with
"TypeError: object of type 'NoneType' has no len()" inside the Slice rule)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsec.capture import from_onnx
from sparsec.numerics import evaluate, sample_inputs
from sparsec.passes.analysis.cost_model import estimate_costs
from sparsec.passes.analysis.dependency_groups import dependency_groups
from sparsec.passes.structural.crop_channels import CropChannels
from sparsec.passes.structural.shape_folding import fold_shape_computations
from sparsec.pm.context import PassContext
from sparsec.pm.manager import PassManager

from .conftest import assert_zero_equivalence, copy


def _shufflenet() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from sparsec.models_zoo.shufflenet_tv import build_shufflenet_v2_tv, shufflenet_v2_tv_inputs

    return build_shufflenet_v2_tv(), shufflenet_v2_tv_inputs(1)


def _vit() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    # ViT-B/16's structure at a quarter of its width (the test's time, not the ops, changes).
    from sparsec.models_zoo.vit_tv import ViTB16Config, build_vit_b16_tv, vit_b16_tv_inputs

    cfg = ViTB16Config(hidden_dim=192, num_heads=3, mlp_dim=768)
    return build_vit_b16_tv(cfg), vit_b16_tv_inputs(1)


BUILDERS = {"shufflenet_v2": _shufflenet, "vit_b16": _vit}
EXPORTERS = ("dynamo", "dynamo-unoptimized", "legacy")


def export_file(builder: str, exporter: str, folder: Path) -> Path:
    module, inputs = BUILDERS[builder]()
    path = folder / f"{builder}-{exporter}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(module, inputs, path, dynamo=False, opset_version=17, input_names=["input"])
        else:
            program = torch.onnx.export(
                module, inputs, dynamo=True, opset_version=17, optimize=exporter == "dynamo", input_names=["input"], verbose=False
            )
            program.save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_crop_half_the_macs_of_real_exports(builder: str, exporter: str, tmp_path: Path) -> None:
    model = from_onnx(export_file(builder, exporter, tmp_path))
    before = estimate_costs(model).total("macs")
    cropped = copy(model)
    PassManager([CropChannels(macs=0.5)], verify_each=True).run(cropped, PassContext())
    assert estimate_costs(cropped).total("macs") <= 0.5 * before
    feeds = sample_inputs(cropped)
    assert all(np.isfinite(o).all() for o in evaluate(cropped, feeds))  # runs in ORT

    # Exactness: the planned channels zeroed, then cropped, give the same outputs.
    folded = copy(model)
    fold_shape_computations(folded)
    dg = dependency_groups(folded, multiple=16)
    removed, _ = CropChannels(macs=0.5).plan(folded, dg, PassContext())
    for g in dg.groups:
        if g.lossy:
            removed[g.classes] = False
    assert removed.any()
    assert_zero_equivalence(folded, dg, removed)


def test_folding_shape_computations_makes_chunk_and_view_croppable(tmp_path: Path) -> None:
    # The legacy exporter computes chunk's Slice ends and view's shapes from Shape(x): without
    # folding, all of ShuffleNet's branch channels look pinned by those Shape reads.
    model = from_onnx(export_file("shufflenet_v2", "legacy", tmp_path))
    assert any(n.op_type == "Shape" for n in model.graph)
    raw = dependency_groups(model, multiple=16)
    pinned_by_shape = sum(g.size for g in raw.groups if g.pinned and "read at run time by Shape" in g.pinned)
    assert pinned_by_shape > 0
    # Unfolded, a Slice with computed ends is pinned with its reason (it used to call len(None)).
    assert any(g.pinned and "Slice with starts/ends computed at run time" in g.pinned for g in raw.groups)
    folded = copy(model)
    assert fold_shape_computations(folded) > 0
    assert not any(n.op_type == "Shape" for n in folded.graph)
    dg = dependency_groups(folded, multiple=16)
    assert not any(g.pinned and "Shape" in g.pinned for g in dg.groups)
    assert sum(g.size for g in dg.prunable_groups()) >= sum(g.size for g in raw.prunable_groups())
    # Weights keep their names and values.
    for name, value in model.graph.initializers.items():
        if value.const_value is not None and value.const_value.dtype.is_floating_point() and value.const_value.size > 1:
            np.testing.assert_array_equal(folded.graph.initializers[name].const_value.numpy(), value.const_value.numpy())

