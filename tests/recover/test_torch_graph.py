"""IR -> torch: the converted module computes what ONNX Runtime computes, on real exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsec.calib.data import CalibrationData
from sparsec.calib.runner import run_outputs
from sparsec.layers import find_layers
from sparsec.recover.torch_graph import TorchGraph, trainable_names

from .conftest import token_feeds


def _check(model, feeds, atol=2e-5):  # noqa: ANN001, ANN202
    ref = run_outputs(model, CalibrationData(feeds, batch_size=len(next(iter(feeds.values())))))
    with torch.no_grad():
        got = [t.numpy() for t in TorchGraph(model)(feeds)]
    assert len(got) == len(ref)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_hf_exports_match_ort(hf_models, family):  # noqa: ANN001
    model = hf_models[family]
    _check(model, token_feeds(2, seed=3))
    names = set(trainable_names(model))
    weights = {layer.weight.name for layer in find_layers(model)}
    assert weights and weights <= names  # every layer weight trains
    gathered = {n.inputs[0].name for n in model.graph if n.op_type == "Gather" and n.inputs[0].is_initializer()}
    assert gathered and not gathered & names  # embedding tables do not


def test_cnn_matches_ort():
    from sparsec.models_zoo.export import cached_export_ir

    model = cached_export_ir("resnet")
    x = np.random.default_rng(0).standard_normal([2, *[int(d) for d in model.graph.inputs[0].shape[1:]]]).astype(np.float32)
    name = model.graph.inputs[0].name
    if isinstance(model.graph.inputs[0].shape[0], int):  # a static-batch export takes its own batch only
        x = x[: model.graph.inputs[0].shape[0]]
    _check(model, {name: x}, atol=1e-4)


def test_gradients_reach_weights_and_write_back_by_name(hf_models):  # noqa: ANN001
    model = hf_models["bert"].clone()
    graph = TorchGraph(model)
    out = graph(token_feeds(2))[0]
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in graph.params.values())
    name = next(iter(graph.param_key))
    with torch.no_grad():
        graph.params[graph.param_key[name]].add_(1.0)
    before = model.graph.initializers[name].const_value.numpy().copy()
    assert name in graph.write_back(model)
    np.testing.assert_allclose(model.graph.initializers[name].const_value.numpy(), before + 1.0, rtol=1e-6)


def test_unknown_op_is_one_line_error():
    from sparsec.errors import UnsupportedError
    from sparsec.testing import make_model

    m = make_model("""
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 4] x) => (float[2, 4] y) {
    y = Hardmax(x)
}
""")
    with pytest.raises(UnsupportedError, match="Hardmax"):
        TorchGraph(m)
