"""MoE experts pruned N:M by `nm-sparsity` and run by the packed MoEFFN kernel: the pruning
(per expert, along each projection's reduction axis, one decision per projection), the
lowering (packed when every projection holds one pattern, dense otherwise, with the reason),
and the packed kernel in real ONNX Runtime sessions against the reference lowering of the
same pruned op, on every ISA, batch 1 and many tokens, gated and ungated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sparsec.dialect.reference import lower_to_reference
from sparsec.ir.io import model_bytes
from sparsec.kernels import available_isas, kernels_available
from sparsec.layer_view import view_of
from sparsec.layers import find_layers
from sparsec.nm_pattern import nm_violations
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.runtime import make_session

from .moe_models import moe_model, random_experts

needs_kernels = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")
X86_ISAS = [i for i in ("avx512", "avx2", "scalar") if i in available_isas()]


def _pruned(shape, d, e, f, top_k, act, gating, gated, n, m, seed=0, options=" min_params=16"):  # noqa: ANN001, ANN202
    ex, rw, rb = random_experts(d, e, f, gated, seed)
    model = moe_model(shape, ex, rw, rb, top_k, act, gating)
    ctx = PassContext()
    PassManager(parse_pipeline(f"nm-sparsity{{n={n} m={m}{options}}}")).run(model, ctx)
    return model, ctx


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _pair(shape, d, e, f, top_k, act, gating, gated, n, m, seed=0, options=" min_params=16"):  # noqa: ANN001, ANN202
    """(reference lowering, kernel lowering, lowering context) of one pruned MoE op."""
    model, _ = _pruned(shape, d, e, f, top_k, act, gating, gated, n, m, seed, options)
    ref = _copy(model)
    lower_to_reference(ref)
    ctx = PassContext()
    PassManager(parse_pipeline("lower-moe-kernels")).run(model, ctx)
    assert [node.op_type for node in model.graph] == ["MoEFFN"]
    return ref, model, ctx


def _run(model: ir.Model, x: np.ndarray, threads: int = 2) -> np.ndarray:
    return make_session(model_bytes(model), threads).run(None, {"x": x})[0]


def _attrs(model: ir.Model) -> dict[str, int]:
    return {k: a.value for k, a in next(iter(model.graph)).attributes.items()}


def test_nm_sparsity_prunes_each_expert_along_its_reduction_axis() -> None:
    model, ctx = _pruned((3, 32), 32, 4, 24, 2, "relu", "none", True, 2, 4)
    layers = {layer.name: layer for layer in find_layers(model, ("MoE",))}
    assert sorted(layers) == ["moe/w1", "moe/w2", "moe/w_up"]
    for layer in layers.values():
        w = layer.weight.const_value.numpy()
        assert layer.reduction_axis == 1 and layer.nm == (2, 4)
        assert nm_violations(w, 2, 4, 1) == 0 and np.count_nonzero(w) == w.size // 2
        # per expert: expert 0 alone is 2:4 too, and no group spans two experts (axis 1 < rank)
        assert nm_violations(w[0], 2, 4, 0) == 0
        assert view_of(layer).input_name is None and "routed" in view_of(layer).reason
    records = [d for d in ctx.decisions if d["pass"] == "nm-sparsity"]
    assert [(d["layer"], d["op_type"], d["decision"], d["axis"]) for d in records] == [
        (f"moe/{p}", "MoE", "2:4", 1) for p in ("w1", "w2", "w_up")]
    # the marked op still verifies and lowers to reference ONNX
    assert lower_to_reference(_copy(model)) == 4


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_data_criteria_prune_experts_by_magnitude_and_say_so(criterion: str) -> None:
    from sparsec.calib.data import CalibrationData

    ex, rw, rb = random_experts(32, 4, 24, False, 0)
    model = moe_model((3, 32), ex, rw, rb, 2, "relu", "none")
    calib = CalibrationData({"x": np.random.default_rng(0).standard_normal((8, 3, 32)).astype(np.float32)})
    ctx = PassContext(calibration=calib)
    PassManager(parse_pipeline(f"nm-sparsity{{criterion={criterion} min_params=16}}")).run(model, ctx)
    assert [(d["layer"], d["decision"], d["criterion"]) for d in ctx.decisions] == [
        ("moe/w1", "2:4", "magnitude"), ("moe/w2", "2:4", "magnitude")]
    assert all(f"{criterion} needs an input view" in d["note"] for d in ctx.decisions)
    expected, _ = _pruned((3, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4)
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(),
                                      expected.graph.initializers[name].const_value.numpy())


def test_min_params_and_exclude_select_expert_projections() -> None:
    _, ctx = _pruned((3, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4, options=" min_params=16 exclude=['moe/w2']")
    decisions = {d["layer"]: d["decision"] for d in ctx.decisions}
    assert decisions == {"moe/w1": "2:4", "moe/w2": "skip"}
    _, ctx = _pruned((3, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4, options=" min_params=100000")
    assert {d["decision"] for d in ctx.decisions} == {"skip"}


def test_preset_runs_moefy_before_nm_sparsity() -> None:
    from sparsec.pm.presets import preset_pipeline

    names = [p.name for p in preset_pipeline(sparsity="2:4", moe="experts:4,active:0.5").passes]
    assert names.index("moefy-ffn") < names.index("nm-sparsity")


@needs_kernels
@pytest.mark.parametrize("isa", X86_ISAS)
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (4, 16)])
def test_packed_kernel_matches_reference(monkeypatch, isa: str, n: int, m: int) -> None:  # noqa: ANN001
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", isa)
    # D = 72, F = 40: partial last tiles of both projections and two 64-column chunks of w2
    # (m = 16 needs whole tiles); 64 tokens put > 24 rows on an expert (the row-vectorised
    # N:M path), 5 tokens the small one.
    d, f = (72, 40) if m < 16 else (96, 32)
    for rows, gated, gating in ((1, False, "none"), (1, True, "softmax"), (5, True, "none"), (64, False, "softmax")):
        ref, kern, ctx = _pair((rows, d), d, 4, f, 2, "gelu", gating, gated, n, m, seed=rows)
        assert _attrs(kern)["n"] == n and _attrs(kern)["m"] == m
        assert ctx.decisions[-1]["decision"] == f"kernel MoEFFN {n}:{m}"
        x = np.random.default_rng(rows).standard_normal((rows, d)).astype(np.float32)
        np.testing.assert_allclose(_run(kern, x), _run(ref, x), rtol=3e-5, atol=3e-5)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, 40, 130])
def test_packed_kernel_threads_and_3d_input(rows: int) -> None:
    # F = 88: two chunks of w1/w_up, the second a partial tile
    ref, kern, _ = _pair((1, rows, 64), 64, 8, 88, 3, "silu", "softmax", True, 2, 4, seed=rows)
    x = np.random.default_rng(0).standard_normal((1, rows, 64)).astype(np.float32)
    one, two = _run(kern, x, 1), _run(kern, x, 2)
    np.testing.assert_array_equal(one, two)  # work split by output chunks: no thread-order sums
    np.testing.assert_allclose(two, _run(ref, x), rtol=3e-5, atol=3e-5)


@needs_kernels
def test_mixed_patterns_lower_dense_with_the_reason() -> None:
    ref, kern, ctx = _pair((7, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4, options=" min_params=16 exclude=['moe/w2']")
    assert "n" not in _attrs(kern)
    assert ctx.decisions[-1]["decision"] == "kernel MoEFFN"
    assert "w1 2:4, w2 dense" in ctx.decisions[-1]["reason"]
    # the pruned weights, not N:M-packed: in the dense kernel's panel layout
    assert _attrs(kern)["panel"] == 32
    assert {i.name for i in next(iter(kern.graph)).inputs if i is not None} >= {"w1.panels", "w2.panels"}
    x = np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(kern, x), _run(ref, x), rtol=2e-5, atol=2e-5)


def test_broken_pattern_is_not_packed() -> None:
    model, _ = _pruned((2, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4)
    w1 = model.graph.initializers["w1"]
    w = w1.const_value.numpy().copy()
    w[1, :4, 0] = 1.0  # expert 1: a group of 4 with 4 nonzeros
    w1.const_value = ir.tensor(w, name="w1")
    ctx = PassContext()
    PassManager(parse_pipeline("lower-moe-kernels"), verify_each=False).run(model, ctx)
    assert ctx.decisions[-1]["decision"] == "kernel MoEFFN"
    assert "cannot pack w1" in ctx.decisions[-1]["reason"]


@needs_kernels
def test_corrupt_meta_fails_at_session_creation() -> None:
    from sparsec.kernels import PackedFormatError

    _, kern, _ = _pair((2, 32), 32, 4, 24, 2, "relu", "none", False, 2, 4)
    meta = kern.graph.initializers["w2.nm_meta"]
    words = meta.const_value.numpy().copy()
    words[len(words) // 2:] = 0  # both slots of a group at position 0
    meta.const_value = ir.tensor(words, name=meta.name)
    with pytest.raises(PackedFormatError, match="MoEFFN .*not strictly increasing"):
        make_session(model_bytes(kern), 1)


@needs_kernels
def test_compile_moe_with_sparsity_runs_the_packed_kernel(hf_export, tmp_path: Path) -> None:  # noqa: ANN001
    from sparsec.cli.main import main

    out = tmp_path / "out"
    assert main(["-q", "compile", str(hf_export("gpt2")), "--moe=experts:4,active:0.5", "--sparsity=2:4",
                 "--no-bench", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    pruned = [d for d in manifest["decisions"] if d["pass"] == "nm-sparsity" and d.get("op_type") == "MoE"]
    assert len(pruned) == 4 and {d["decision"] for d in pruned} == {"2:4"}  # w1, w2 of 2 layers
    lowered = [d for d in manifest["decisions"] if d["pass"] == "lower-moe-kernels"]
    assert [d["decision"] for d in lowered] == ["kernel MoEFFN 2:4"] * 2
    graph = onnx.load(str(out / "model.onnx")).graph
    kernels = [n for n in graph.node if n.op_type == "MoEFFN"]
    assert len(kernels) == 2 and all({(a.name, a.i) for a in n.attribute} >= {("n", 2), ("m", 4)} for n in kernels)
    assert not any(n.op_type == "NMSparse" for n in graph.node)
    # tiny random GPT-2: top-2 of 4 experts and half the expert weights cost a few points
    assert manifest["fidelity"]["worst_cosine"] > 0.9


@pytest.mark.parametrize("gated", [False, True])
def test_inspect_raises_the_packed_kernel_back_to_the_marked_op(gated: bool) -> None:
    from sparsec.cli.kernel_view import raise_kernel_ops

    pruned, _ = _pruned((4, 32), 32, 4, 24, 2, "gelu", "softmax", gated, 2, 4)
    kern = _copy(pruned)
    PassManager(parse_pipeline("lower-moe-kernels")).run(kern, PassContext())
    assert raise_kernel_ops(kern) == 1
    node = next(n for n in kern.graph if n.op_type == "MoE")
    assert {k: a.value for k, a in node.attributes.items()} == {"top_k": 2, "activation": "gelu", "gating": "softmax"}
    for part in ("w1", "w2", "w_up") if gated else ("w1", "w2"):
        marker = next(n for n in kern.graph if n.name == f"moe/{part}/marker")
        assert (marker.attributes["n"].value, marker.attributes["m"].value, marker.attributes["axis"].value) == (2, 4, 1)
        np.testing.assert_array_equal(marker.inputs[0].const_value.numpy(),
                                      pruned.graph.initializers[part].const_value.numpy())
    assert not any(name.endswith((".nm_values", ".nm_meta")) for name in kern.graph.initializers)
    lower_to_reference(kern)
    lower_to_reference(pruned)
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_array_equal(_run(kern, x), _run(pruned, x))


def test_cost_model_counts_expert_projections_packed() -> None:
    from sparsec.passes.analysis.cost_model import estimate_costs, sparse_weight_bytes

    ex, rw, rb = random_experts(32, 4, 24, True, 0)
    dense = {c.name: c for c in estimate_costs(moe_model((6, 32), ex, rw, rb, 2, "relu")).layers}
    pruned, _ = _pruned((6, 32), 32, 4, 24, 2, "relu", "none", True, 2, 4)
    sparse = {c.name: c for c in estimate_costs(pruned).layers}
    assert sorted(dense) == sorted(sparse) == ["moe/w1", "moe/w2", "moe/w_up"]
    for name in dense:
        assert dense[name].macs == sparse[name].macs == 6 * 2 * 32 * 24  # tokens x top_k x D x F
        assert (dense[name].sparsity, sparse[name].sparsity) == ("dense", "2:4")
        assert sparse[name].effective_macs == dense[name].macs // 2
    # w_up holds no router or bias: its bytes are exactly the experts', dense then packed
    assert dense["moe/w_up"].weight_bytes == 4 * 32 * 24 * 4
    assert sparse["moe/w_up"].weight_bytes == sparse_weight_bytes(4 * 32 * 24, 4, 2, 4)
