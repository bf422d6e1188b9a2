"""Lowering from measurements: per-layer choices, not pruning what will not run faster,
--prune-all, the never-slower fallback and what the manifest says about each layer."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec.compiler import CompileOptions, compile_model
from sparsec.kernels import kernels_available
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.pm.presets import preset_pipeline
from sparsec.tune import LayerShape, TuneCache

from .models import two_layers

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")

SHAPE = LayerShape("matmul", (256, 256), rows=1, n=2, m=4, threads=2, copies=2)


def _remember(shape: LayerShape, variant: str, dense_us: float, sparse_us: float) -> None:
    """Put an answer in this machine's cache (as a past `sparsec tune` would have)."""
    from sparsec.tune import variants_for
    from sparsec.tune.tuner import PROTOCOL

    TuneCache().put(shape.key, {"variant": variant, "dense_us": dense_us, "sparse_us": sparse_us,
                                "sparse_variant": "nm-kernel", "noise": 0.01, "reason": f"given {variant}",
                                "variants": sorted(variants_for(shape.op)), "protocol": PROTOCOL})


def test_lowering_follows_the_real_measurement_of_each_shape() -> None:
    model = two_layers(rows=1)
    ctx = PassContext(threads=2)
    PassManager(parse_pipeline("nm-sparsity{min_params=0},lower-nm-kernels,legalize-dense")).run(model, ctx)
    assert set(ctx.measured) == {"w1", "w2"}
    measured = ctx.measured["w1"]
    assert measured["shape"] == SHAPE.key  # two layers of one shape: timed together, once
    assert measured["dense_us"] > 0 and measured["sparse_us"] > 0
    kernels = [n for n in model.graph if n.op_type == "NMSparseMatMul"]
    assert len(kernels) == (2 if measured["variant"] != "dense" else 0)
    for node in kernels:  # the variant chosen is the one lowered
        capped = node.attributes.get("max_threads")
        assert (capped is not None and capped.as_int() == 1) == (measured["variant"] == "nm-kernel-1t")
    # Lowered layers are recorded with the measurement behind them (a dense winner, possible on
    # a busy machine, leaves both layers to legalize-dense and the pass's kept_dense statistics).
    decisions = [d for d in ctx.decisions if d["pass"] == "lower-nm-kernels"]
    assert {d["weight"] for d in decisions} == ({"w1", "w2"} if kernels else set())
    assert all(d["dense_us"] == measured["dense_us"] for d in decisions)


def test_only_faster_leaves_layers_measured_slower_unpruned() -> None:
    _remember(SHAPE, "dense", dense_us=10.0, sparse_us=30.0)
    model = two_layers(rows=1)
    before = model.graph.initializers["w1"].const_value.numpy().copy()
    ctx = PassContext(threads=2)
    records = PassManager(parse_pipeline("nm-sparsity{min_params=0 only_faster=true}")).run(model, ctx)
    assert records[0].stats["layers_pruned"] == 0
    assert all("runs no faster sparse" in r for r in records[0].stats["skipped"].values())
    np.testing.assert_array_equal(model.graph.initializers["w1"].const_value.numpy(), before)


def test_only_faster_prunes_layers_measured_faster() -> None:
    _remember(SHAPE, "nm-kernel", dense_us=30.0, sparse_us=10.0)
    model = two_layers(rows=1)
    ctx = PassContext(threads=2)
    PassManager(parse_pipeline("nm-sparsity{min_params=0 only_faster=true},lower-nm-kernels,legalize-dense")).run(
        model, ctx
    )
    assert [n.op_type for n in model.graph].count("NMSparseMatMul") == 2


def test_the_cpu_preset_prunes_only_faster_layers_unless_prune_all() -> None:
    assert "only_faster=true" in preset_pipeline(target="cpu", sparsity="2:4").to_text()
    assert "only_faster" not in preset_pipeline(target="cpu", sparsity="2:4", prune_all=True).to_text()
    assert "only_faster" not in preset_pipeline(target="cuda", sparsity="2:4").to_text()


def test_prune_all_prunes_and_keeps_dense_what_is_not_faster() -> None:
    _remember(SHAPE, "dense", dense_us=10.0, sparse_us=30.0)
    result = compile_model(two_layers(rows=1), CompileOptions(prune_all=True, bench=False))
    w1 = result.model.graph.initializers["w1"].const_value.numpy()
    assert np.count_nonzero(w1) == w1.size // 2  # 2:4 weights shipped, run dense
    layers = {e["weight"]: e for e in result.manifest["lowering"]["layers"]}
    assert layers["w1"]["runs"] == "dense (weights pruned)"
    assert layers["w1"]["dense_us"] == 10.0 and layers["w1"]["sparse_us"] == 30.0
    default = compile_model(two_layers(rows=1), CompileOptions(bench=False))
    w1 = default.model.graph.initializers["w1"].const_value.numpy()
    assert np.count_nonzero(w1) == w1.size  # not pruned: it would not run faster
    layers = {e["weight"]: e for e in default.manifest["lowering"]["layers"]}
    assert layers["w1"]["runs"] == "dense (not pruned)" and "given dense" in layers["w1"]["reason"]


def test_never_slower_moves_layers_back_to_dense_worst_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scalar kernels told (through the cache) that they are faster: the end-to-end check
    finds the compiled model slower and moves the layers back, least gain first."""
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", "scalar")
    rows = 64  # a batch of 64 rows: MLAS is many times faster than the scalar kernel
    shape = LayerShape("matmul", (256, 256), rows=rows, n=2, m=4, threads=2, copies=2)
    _remember(shape, "nm-kernel", dense_us=100.0, sparse_us=50.0)
    result = compile_model(two_layers(rows=rows), CompileOptions())
    lowering = result.manifest["lowering"]
    fallback = lowering["never_slower"]
    # Equal gains: graph order. After w1 moves back, w2 is one copy of its shape, a tuning key
    # the cache does not hold: the rebuild measures it itself, and the scalar kernel loses.
    # So w2 ends dense either as the second layer moved back or by its own measurement.
    moved = [m["weight"] for m in fallback["moved_to_dense"]]
    assert moved in (["w1"], ["w1", "w2"]), fallback
    assert fallback["steps"][0]["layers_moved"] == 0 and fallback["steps"][-1]["layers_moved"] == len(moved)
    assert fallback["steps"][0]["speedup"] < 1.0
    assert "NMSparseMatMul" not in [n.op_type for n in result.model.graph]
    assert lowering["sparse_kernel_layers"] == 0
    reasons = {e["weight"]: e["reason"] for e in lowering["layers"]}
    assert "moved back to dense" in reasons["w1"]
    assert "moved back to dense" in result.manifest["summary"]
    w1 = result.model.graph.initializers["w1"].const_value.numpy()
    assert np.count_nonzero(w1) == w1.size  # moved back means not pruned either (only_faster)
    assert result.manifest["latency"]["identical_to_dense"]  # nothing pruned, nothing lowered


def test_never_slower_moves_gains_below_the_noise_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-layer gains too small for the end-to-end measurement to see, even all together:
    every kernel layer goes back in one rebuild, not one, then two, then four at a time."""
    monkeypatch.setenv("SPARSEC_KERNEL_ISA", "scalar")
    rows = 64
    shape = LayerShape("matmul", (256, 256), rows=rows, n=2, m=4, threads=2, copies=2)
    _remember(shape, "nm-kernel", dense_us=100.0, sparse_us=99.999)  # 1 ns each: below any noise
    result = compile_model(two_layers(rows=rows), CompileOptions())
    fallback = result.manifest["lowering"]["never_slower"]
    assert fallback["predicted_gain_ms"] < 1e-4
    assert [m["weight"] for m in fallback["moved_to_dense"]] == ["w1", "w2"]
    assert [s["layers_moved"] for s in fallback["steps"]] == [0, 2]
    assert "NMSparseMatMul" not in [n.op_type for n in result.model.graph]


def test_the_manifest_records_the_latency_protocol() -> None:
    result = compile_model(two_layers(rows=1), CompileOptions())
    lat = result.manifest["latency"]
    assert lat["measured"] and lat["dense_ms"] > 0 and lat["compiled_ms"] > 0
    assert lat["baseline"] in ("dense (ORT default, spinning)", "dense (spinning off)")
    assert lat["dense_ms"] == min(lat["dense_spinning_ms"], lat["dense_no_spinning_ms"])
    assert lat["noise"] >= 0 and lat["faster"] == (lat["speedup"] > 1 + lat["noise"])
    assert lat["compiled_ms"] == min(lat["compiled_by_setting_ms"].values())  # both spinning settings timed
    assert result.manifest["runtime_settings"] == lat["compiled_settings"]
    assert lat["compiled_settings"]["allow_spinning"] in (0, 1)
    assert "load_average" in lat and lat["rounds"] >= 7
    lowering = result.manifest["lowering"]
    assert lowering["choices"].startswith("measured")
    for entry in lowering["layers"]:
        assert {"layer", "weight", "runs", "reason"} <= set(entry)
        assert entry["dense_us"] > 0 and entry["sparse_us"] > 0


def test_without_tuning_the_fixed_thresholds_decide_and_say_so() -> None:
    result = compile_model(two_layers(rows=1), CompileOptions(tune=False, bench=False))
    lowering = result.manifest["lowering"]
    assert lowering["choices"] == "fixed thresholds (tuning off)"
    assert all("fixed thresholds" in e["reason"] for e in lowering["layers"])
    assert lowering["sparse_kernel_layers"] == 2  # 65536 parameters, 1 row: within the thresholds


def test_the_runtime_uses_the_settings_the_compile_measured(tmp_path) -> None:
    from sparsec.compiler import compile_file
    from sparsec.runtime import InferenceSession

    from .models import write_two_layers

    result = compile_file(write_two_layers(tmp_path), tmp_path / "out", CompileOptions())
    chosen = result.manifest["runtime_settings"]["allow_spinning"]
    session = InferenceSession(tmp_path / "out")
    opts = session._session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == str(chosen)


def test_raised_artifact_lowers_again_with_the_same_choices_and_names() -> None:
    """`sparsec finetune` raises kernel ops, retrains, lowers again: the replayed choices (not a
    new measurement) give the same ops, variants and initializer names as the compile."""
    from sparsec.cli.kernel_view import raise_kernel_ops

    model = two_layers(rows=1)
    ctx = PassContext(threads=2, replay={"w1": "nm-kernel-1t"})  # w2 is measured, w1 forced
    PassManager(parse_pipeline("nm-sparsity{min_params=0},lower-nm-kernels,legalize-dense")).run(model, ctx)
    w1 = next(n for n in model.graph if n.op_type == "NMSparseMatMul" and n.inputs[1].name == "w1.nm_values")
    assert w1.attributes["max_threads"].as_int() == 1
    compiled = ([n.op_type for n in model.graph], sorted(model.graph.initializers))
    variants: dict[str, str] = {}
    raise_kernel_ops(model, variants)
    assert variants["w1"] == "nm-kernel-1t" and "w1" in model.graph.initializers
    assert not any(n.op_type == "NMSparseMatMul" for n in model.graph)
    again = PassContext(threads=2, replay=variants)
    PassManager(parse_pipeline("lower-nm-kernels,legalize-dense")).run(model, again)
    assert ([n.op_type for n in model.graph], sorted(model.graph.initializers)) == compiled
    assert not again.measured  # nothing timed: every kernel layer was replayed


def test_never_slower_queue_holds_nchwc_convs_by_their_profiled_gain() -> None:
    """lower-conv-nchwc's decisions (node times in ms, source weight by zero pattern) join the
    fallback's queue in microseconds; a conv whose source weight is unknown cannot go back."""
    from sparsec.never_slower import kernel_layers_by_gain

    decisions = [
        {"pass": "lower-nm-kernels", "layer": "fc", "weight": "w_fc", "decision": "kernel NMSparseMatMul 2:4 (nm-kernel)",
         "dense_us": 40.0, "sparse_us": 25.0},
        {"pass": "lower-conv-nchwc", "layer": "c1_nchwc", "weight": "w_c1", "decision": "kernel SparseConvNchwc",
         "dense_ms": 0.050, "sparse_ms": 0.045},
        {"pass": "lower-conv-nchwc", "layer": "c2_nchwc", "decision": "kernel SparseConvNchwc",
         "dense_ms": 0.2, "sparse_ms": 0.1},
        {"pass": "lower-conv-nchwc", "layer": "c3_nchwc", "weight": "w_c3", "decision": "dense",
         "dense_ms": 0.1, "sparse_ms": 0.2},
    ]
    queue = kernel_layers_by_gain(decisions)
    assert [q["weight"] for q in queue] == ["w_c1", "w_fc"]
    assert queue[0]["gain_us"] == pytest.approx(5.0) and queue[0]["dense_us"] == pytest.approx(50.0)


def test_with_dense_layers_reaches_the_conv_lowering() -> None:
    from sparsec.never_slower import with_dense_layers
    from sparsec.pm import Pipeline

    _, legalize = with_dense_layers(Pipeline([]), parse_pipeline("lower-nm-kernels,lower-conv-nchwc"), ["w_c1"])
    assert [tuple(p.dense) for p in legalize] == [("w_c1",), ("w_c1",)]
