"""`moefy-ffn` on real exports: exact with every expert active, lossy (and recorded) below."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.dialect import DOMAIN
from sparsec.errors import OptionError
from sparsec.passes.moe.partition import balanced_kmeans
from sparsec.pm import PassContext, PassManager, parse_pipeline


def _run(model: ir.Model, text: str, ctx: PassContext | None = None):  # noqa: ANN202
    ctx = ctx or PassContext()
    record = PassManager(parse_pipeline(text)).run(model, ctx)[0]
    return record, ctx


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "t5_gated"])
def test_all_experts_active_is_exact(hf_export, name: str) -> None:
    model = ir.load(str(hf_export(name)))
    record, ctx = _run(model, "moefy-ffn{experts=4 top_k=4}")
    assert record.stats["ffns_converted"] == 2
    assert sum(n.domain == DOMAIN and n.op_type == "MoE" for n in model.graph) == 2
    assert record.fidelity.rel_l2 < 1e-5  # measured by the pass manager through the reference lowering
    layers = [d for d in ctx.decisions if d["pass"] == "moefy-ffn"]
    assert len(layers) == 2 and all(d["cosine"] > 0.99999 for d in layers)


def test_fewer_experts_is_lossy_and_recorded(hf_export) -> None:
    model = ir.load(str(hf_export("bert")))
    record, ctx = _run(model, "moefy-ffn{experts=4 top_k=1}")
    assert 1e-4 < record.fidelity.rel_l2 < 1.0
    d = [d for d in ctx.decisions if d["pass"] == "moefy-ffn"][0]
    assert d["active_fraction"] == 0.25 and d["decision"] == "moe 1/4" and d["cosine"] < 0.999
    assert d["fidelity_inputs"] == "standard normal"


def test_data_methods_use_calibration(hf_export) -> None:
    path = str(hf_export("bert"))
    model = ir.load(path)
    name = model.graph.inputs[0].name
    calib = CalibrationData({name: np.random.default_rng(0).integers(0, 100, (16, 8)).astype(np.int64)}, batch_size=1)
    results = {}
    for method, router in (("weights", "centroid"), ("coactivation", "learned"), ("weights", "learned")):
        m = ir.load(path)
        _, ctx = _run(m, f"moefy-ffn{{experts=4 top_k=2 method={method} router={router}}}", PassContext(calibration=calib))
        decisions = [d for d in ctx.decisions if d["pass"] == "moefy-ffn"]
        assert all(d["fidelity_inputs"] == "calibration" for d in decisions) or router == "centroid"
        results[(method, router)] = np.mean([d["cosine"] for d in decisions])
    # a router fitted to the data beats the data-free centroid on that data
    assert results[("weights", "learned")] > results[("weights", "centroid")] - 0.05
    assert all(0.0 < c <= 1.0 for c in results.values())


def test_data_methods_need_calibration(hf_export) -> None:
    model = ir.load(str(hf_export("bert")))
    with pytest.raises(OptionError, match="calibration data"):
        _run(model, "moefy-ffn{experts=4 top_k=2 router=learned}")


def test_indivisible_hidden_is_skipped_with_reason(hf_export) -> None:
    model = ir.load(str(hf_export("bert")))
    record, ctx = _run(model, "moefy-ffn{experts=5 top_k=2}")
    assert record.stats["ffns_converted"] == 0
    assert all("not a multiple of experts=5" in r for r in record.stats["skipped"].values())


@pytest.mark.parametrize("text", ["moefy-ffn{experts=4 top_k=5}", "moefy-ffn{method=magic}", "moefy-ffn{router=x}"])
def test_bad_options(text: str) -> None:
    with pytest.raises(OptionError):
        parse_pipeline(text)


def test_balanced_kmeans_is_balanced_and_groups_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 8)) * 5
    points = np.concatenate([c + rng.standard_normal((16, 8)) * 0.1 for c in centers])
    labels = balanced_kmeans(points, 4)
    assert np.bincount(labels).tolist() == [16] * 4
    # every true cluster lands in one expert
    assert all(len(set(labels[i * 16:(i + 1) * 16])) == 1 for i in range(4))
