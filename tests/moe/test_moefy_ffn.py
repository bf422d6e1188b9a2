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


@pytest.mark.parametrize("scan", ["output", "layer"])
def test_per_layer_top_k_meets_the_active_budget(hf_export, scan: str) -> None:
    path = str(hf_export("bert"))
    model = ir.load(path)
    name = model.graph.inputs[0].name
    calib = CalibrationData({name: np.random.default_rng(0).integers(0, 100, (16, 8)).astype(np.int64)}, batch_size=1)
    record, ctx = _run(model, f"moefy-ffn{{experts=4 top_k=2 router=learned active=0.5 scan={scan} scan_samples=8}}",
                       PassContext(calibration=calib))
    decisions = [d for d in ctx.decisions if d["pass"] == "moefy-ffn"]
    ks = [d["top_k"] for d in decisions]
    assert len(ks) == 2 and sum(ks) <= 4 and all(d["top_k_choice"].startswith("per layer") for d in decisions)
    assert [n.attributes["top_k"].as_int() for n in model.graph if n.op_type == "MoE"] == ks
    alloc = record.stats["allocation"]
    assert alloc["scan"] == scan and alloc["active_reached"] <= 0.5 + 1e-9 and alloc["active_reached"] == sum(ks) / 8
    for d in decisions:
        if scan == "layer":  # the scanned curve: exact with every expert, and the pass's own measurement at its k
            curve = alloc["layer_cosine_by_k"][d["layer"]]
            assert len(curve) == 4 and curve[-1] > 0.99999 and abs(curve[d["top_k"] - 1] - d["cosine"]) < 1e-3
        else:  # output cosine per scanned k: 1 with every expert, below with fewer
            curve = next(c for n, c in alloc["output_cosine_by_k"].items() if n.startswith(d["layer"]))
            assert curve["4"] == 1.0 and curve["1"] < 1.0


def test_per_layer_top_k_gives_sensitive_layers_more_experts() -> None:
    from sparsec.passes.moe.experts import Experts
    from sparsec.passes.moe.per_layer_k import choose_top_k

    rng = np.random.default_rng(0)
    d, e, f = 8, 4, 4
    x = rng.standard_normal((256, d)).astype(np.float32)

    def layer(weights: list[float]) -> Experts:  # expert i's output scaled by weights[i]
        w2 = rng.standard_normal((e, f, d)).astype(np.float32) * np.array(weights, np.float32)[:, None, None]
        return Experts(w1=rng.standard_normal((e, d, f)).astype(np.float32), b1=np.zeros((e, f), np.float32), w2=w2,
                       b2=np.zeros(d, np.float32), w_up=None)

    # Router: expert 0 first for every token. Layer a: expert 0 carries nearly all the output
    # (one expert suffices); layer b: all experts matter equally.
    router = (np.zeros((d, e), np.float32), np.array([3.0, 2.0, 1.0, 0.0], np.float32))
    layers = [("a", x, layer([1.0, 1e-3, 1e-3, 1e-3]), router, "relu", None), ("b", x, layer([1.0] * 4), router, "relu", None)]
    top_ks, info = choose_top_k(layers, e, 0.5, "none")
    assert top_ks == [1, 3] and info["allocation"]["active_reached"] == 0.5


@pytest.mark.parametrize("floor", [0.9, 0.999999])
def test_fidelity_floor_takes_the_fewest_experts_that_keep_it(hf_export, floor: float) -> None:
    from sparsec.calib.metrics import mean_cosine
    from sparsec.calib.runner import CalibrationRunner

    model = ir.load(str(hf_export("bert")))
    dense = model.clone()
    name = model.graph.inputs[0].name
    calib = CalibrationData({name: np.random.default_rng(0).integers(0, 100, (16, 8)).astype(np.int64)}, batch_size=1)
    record, ctx = _run(model, f"moefy-ffn{{experts=4 router=learned min_fidelity={floor} scan_samples=8}}",
                       PassContext(calibration=calib))
    alloc = record.stats["allocation"]
    rounds = alloc["floor_rounds"]
    assert alloc["min_fidelity"] == floor and rounds and rounds[0]["active"] == 0.25  # the fewest experts first
    # The chosen budget is the smallest tried that met the floor (1.0 = every expert always meets it).
    met = [r["active"] for r in rounds if r["cosine"] >= floor]
    assert alloc["active_target"] == min(met, default=1.0)
    ks = [n.attributes["top_k"].as_int() for n in model.graph if n.op_type == "MoE"]
    head = calib.head(8)
    got = mean_cosine(CalibrationRunner(dense, head).outputs(), CalibrationRunner(model, head).outputs(),
                      CalibrationRunner(dense, head).output_rows())
    assert got >= floor - 1e-6  # measured on the scan samples, as the pass measured it
    if floor > 0.9999:  # only every expert keeps a floor this close to 1
        assert ks == [4, 4]
    else:
        assert sum(ks) < 8


def test_moe_auto_spec_and_flag_errors(capsys) -> None:  # noqa: ANN001
    from sparsec.passes.moe.spec import moe_pass_text

    assert moe_pass_text("auto", 0.97) == "moefy-ffn{experts=16 min_fidelity=0.97 method=coactivation router=learned}"
    assert moe_pass_text("auto,experts:8,method:weights", None).startswith("moefy-ffn{experts=8 min_fidelity=0.99 method=weights")
    with pytest.raises(OptionError, match="auto chooses the active fraction"):
        moe_pass_text("auto,active:0.5", 0.9)
    with pytest.raises(OptionError, match="needs --moe=auto"):
        moe_pass_text("experts:4,active:0.5", 0.9)
    from sparsec.cli.main import main

    assert main(["pipeline", "show", "--moe=experts:4,active:0.5", "--sparsity=none", "--min-fidelity=0.9"]) == 2
    assert "needs --sparsity=auto or --moe=auto" in capsys.readouterr().err


def test_refine_moves_experts_where_the_measured_output_gains() -> None:
    """The search keeps the active budget and follows the measurement, not the allocator."""
    from sparsec.passes.moe.per_layer_k import refine_by_moves

    nodes = [ir.Node(DOMAIN, "MoE", [], attributes=[ir.AttrInt64("top_k", 2)], name=f"m{i}") for i in range(3)]
    best = [1, 4, 1]  # the measurement's optimum: layer 1 matters most

    def measure() -> float:
        ks = [n.attributes["top_k"].as_int() for n in nodes]
        return 1.0 - 0.01 * sum(abs(k - b) for k, b in zip(ks, best, strict=True))

    top_ks, history = refine_by_moves(nodes, [2, 2, 2], [64, 64, 64], 4, measure, rounds=5)
    assert top_ks == best and sum(top_ks) == 6
    assert [n.attributes["top_k"].as_int() for n in nodes] == best
    assert history[0]["top_k"] == [2, 2, 2] and history[-1]["cosine"] == 1.0
    assert all(a["cosine"] < b["cosine"] for a, b in zip(history, history[1:], strict=False))
    # A wider FFN never receives an expert from a narrower one (that would raise the budget).
    top_ks, _ = refine_by_moves(nodes, [2, 2, 2], [64, 128, 64], 4, measure, rounds=5)
    assert top_ks[1] == 2


def test_refine_on_an_export_keeps_the_budget_and_does_not_lose(hf_export) -> None:
    path = str(hf_export("bert"))
    name = ir.load(path).graph.inputs[0].name
    calib = CalibrationData({name: np.random.default_rng(0).integers(0, 100, (16, 8)).astype(np.int64)}, batch_size=1)
    text = "moefy-ffn{experts=4 router=learned active=0.5 scan_samples=8 refine=2}"
    record, _ = _run(ir.load(path), text, PassContext(calibration=calib))
    alloc = record.stats["allocation"]
    history = alloc["refine_rounds"]
    assert history[-1]["top_k"] == list(record.stats["layer_top_k"].values())
    assert sum(history[-1]["top_k"]) <= 4 and alloc["active_reached"] <= 0.5 + 1e-9
    assert history[-1]["cosine"] >= history[0]["cosine"]
    with pytest.raises(OptionError, match="refine"):
        parse_pipeline("moefy-ffn{active=0.5 refine=-1}")
