"""Reconstruction features of sparsegpt on hand-checked small problems: the bias as a
never-pruned input, the dense-output target, LayerNormalization refits, padding-row masks."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.calib.stats import LayerStats
from sparsec.layer_view import bias_of
from sparsec.layers import find_layers
from sparsec.nm_pattern import nm_violations
from sparsec.numerics import evaluate
from sparsec.passes.sparsify.apply import apply_plan
from sparsec.passes.sparsify.criteria import (
    Reconstruction,
    dense_target,
    prune_2d,
    with_bias_column,
)
from sparsec.passes.sparsify.norm_refit import find_norms, fit_affine
from sparsec.passes.sparsify.patterns import parse_pattern
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model

BLOCK_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
block (float[N, 32] x) => (float[N, 16] y) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    n = LayerNormalization<axis = -1, epsilon = 0.00001>(hb, g1, s1)
    r = Relu(n)
    y = MatMul(r, w2)
}
"""


def _shifted_inputs(correlated, n: int, seed: int) -> np.ndarray:  # noqa: ANN001
    """Correlated inputs with a clearly non-zero mean per feature (as after a GELU/ReLU)."""
    shift = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    return correlated(n, 32, seed) + 2.0 * shift


def _block(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    return make_model(
        BLOCK_TEXT,
        w1=(rng.standard_normal((32, 64)) / 6).astype(np.float32),
        b1=rng.standard_normal(64).astype(np.float32),
        g1=(1 + 0.1 * rng.standard_normal(64)).astype(np.float32),
        s1=(0.1 * rng.standard_normal(64)).astype(np.float32),
        w2=(rng.standard_normal((64, 16)) / 8).astype(np.float32),
    )


def test_bias_as_input_reduces_layer_output_error(correlated) -> None:  # noqa: ANN001
    x = _shifted_inputs(correlated, 512, seed=1)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((48, 32)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    stats = LayerStats(x.T @ x, len(x), x.sum(axis=0, dtype=np.float64))
    p = parse_pattern("2:4")

    plain = prune_2d(w, p, "sparsegpt", stats)
    wa, stats_a, _ = with_bias_column(w, b, stats)
    fitted = prune_2d(wa, p, "sparsegpt", stats_a, keep_last=1)
    new_w, new_b = fitted[:, :-1], fitted[:, -1]

    def err(w2: np.ndarray, b2: np.ndarray) -> float:
        return float(np.linalg.norm(x @ (w - w2).T + (b - b2)) / np.linalg.norm(x @ w.T + b))

    assert nm_violations(new_w, 2, 4, axis=1) == 0  # the pattern holds on the weight columns
    assert not np.allclose(new_b, b)  # the bias took OBS updates
    assert err(new_w, new_b) < 0.95 * err(plain, b), (err(new_w, new_b), err(plain, b))


def test_dense_target_maps_perturbed_inputs_to_dense_outputs(correlated) -> None:  # noqa: ANN001
    x = correlated(2048, 32, seed=2)
    # What earlier pruned layers hand on: a linear distortion of the dense inputs plus noise.
    distort = np.eye(32) + 0.3 * np.random.default_rng(4).standard_normal((32, 32)) / np.sqrt(32)
    xp = (x @ distort + 0.05 * correlated(2048, 32, seed=3)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((16, 32)).astype(np.float32)
    target = dense_target(w, LayerStats(xp.T @ xp, len(x)), xp.T @ x, damp=1e-6)
    # The least-squares solution W X X~^T (X~ X~^T)^-1 (rows as samples here).
    expected = np.linalg.lstsq(xp.astype(np.float64), (x @ w.T).astype(np.float64), rcond=None)[0].T
    np.testing.assert_allclose(target, expected, rtol=1e-3, atol=1e-3)
    assert np.linalg.norm(xp @ target.T - x @ w.T) < 0.5 * np.linalg.norm(xp @ w.T - x @ w.T)


def test_fit_affine_recovers_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    n = rng.standard_normal((1000, 3))
    y = n * np.array([2.0, -0.5, 1.0]) + np.array([0.1, 3.0, -1.0]) + 0.01 * rng.standard_normal((1000, 3))
    g, b = fit_affine(n, y)
    np.testing.assert_allclose(g, [2.0, -0.5, 1.0], atol=0.01)
    np.testing.assert_allclose(b, [0.1, 3.0, -1.0], atol=0.01)


def test_block_finds_bias_and_norm() -> None:
    model = _block()
    layers = {layer.weight.name: layer for layer in find_layers(model)}
    assert bias_of(layers["w1"]).name == "b1"  # type: ignore[union-attr]
    assert bias_of(layers["w2"]) is None
    norms = find_norms(model)
    assert [(n.scale, n.shift) for n in norms] == [("g1", "s1")]


def _norm_output_error(dense: ir.Model, pruned: ir.Model, x: np.ndarray) -> float:
    def norm_out(m: ir.Model) -> np.ndarray:
        m = m.clone()
        value = next(v for node in m.graph for v in node.outputs if v.name == "n")
        m.graph.outputs.clear()
        m.graph.outputs.append(value)
        return evaluate(m, {"x": x})[0]

    d, p = norm_out(dense), norm_out(pruned)
    return float(np.linalg.norm(p - d) / np.linalg.norm(d))


@pytest.mark.parametrize("held_out", [False, True])
def test_norm_refit_reduces_block_error(correlated, held_out: bool) -> None:  # noqa: ANN001
    dense = _block()
    calib = CalibrationData({"x": _shifted_inputs(correlated, 512, seed=1)}, batch_size=128)
    x = _shifted_inputs(correlated, 256, seed=9) if held_out else calib.arrays["x"]
    errors = {}
    for refit in (False, True):
        model = dense.clone()
        w1 = next(layer for layer in find_layers(model) if layer.weight.name == "w1")
        recon = Reconstruction(fit_bias=False, refit_norms=refit, refit_kept=False)
        apply_plan(model, [(w1, parse_pattern("1:4"))], "sparsegpt", calib, recon=recon, progress=False)
        g1 = model.graph.initializers["g1"].const_value.numpy()
        assert np.array_equal(g1, dense.graph.initializers["g1"].const_value.numpy()) != refit
        errors[refit] = _norm_output_error(dense, model, x)
    assert errors[True] < 0.95 * errors[False], errors


def test_pass_rewrites_bias_and_norm_and_improves_output(correlated) -> None:  # noqa: ANN001
    dense = _block()
    calib = CalibrationData({"x": _shifted_inputs(correlated, 512, seed=1)}, batch_size=128)
    x = _shifted_inputs(correlated, 256, seed=9)
    ref = evaluate(dense, {"x": x})[0]
    errs = {}
    for flags in ("fit_bias=false refit_norms=false", "fit_bias=true refit_norms=true"):
        model = dense.clone()
        PassManager(parse_pipeline(f"nm-sparsity{{n=1 m=4 criterion=sparsegpt min_params=1 {flags}}}")).run(
            model, PassContext(calibration=calib)
        )
        errs[flags] = float(np.linalg.norm(evaluate(model, {"x": x})[0] - ref) / np.linalg.norm(ref))
    assert errs["fit_bias=true refit_norms=true"] < errs["fit_bias=false refit_norms=false"], errs


def test_row_mask_keeps_only_real_token_rows() -> None:
    from sparsec.calib.runner import CalibrationRunner
    from sparsec.layer_view import view_of

    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    tok (float[N, 4, 8] x, int64[N, 4] mask) => (float[N, 4, 8] y) {
        y = MatMul(x, w)
    }
    """
    model = make_model(text, w=np.eye(8, dtype=np.float32))
    x = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=np.int64)
    calib = CalibrationData({"x": x, "mask": mask}, batch_size=2, row_mask="mask")
    runner = CalibrationRunner(model, calib, views=[view_of(find_layers(model)[0])])
    rows = next(runner.layer_inputs(runner.views))
    np.testing.assert_array_equal(next(iter(rows.values())), x[mask != 0])


def test_segment_walk_matches_prefix_passes(mlp, mlp_calib) -> None:  # noqa: ANN001
    from sparsec.calib.runner import CalibrationRunner, SegmentWalk
    from sparsec.calib.stats import accumulate_paired, accumulate_paired_rows
    from sparsec.layer_view import view_of
    from sparsec.passes.analysis.layer_stats import layer_stages

    views = [view_of(layer) for layer in find_layers(mlp)]
    stages = layer_stages(mlp, views)
    runner = CalibrationRunner(mlp, mlp_calib, views=views)
    walk = SegmentWalk.plan(runner, stages)
    assert walk is not None
    params: dict[str, np.ndarray] = {}
    dense = pruned = walk.run(0, [], None)
    for k, stage in enumerate(stages):
        if params:
            expected = accumulate_paired(runner, stage, params)
            got = accumulate_paired_rows(zip(walk.rows(dense, stage), walk.rows(pruned, stage), strict=True))
            for name, e in expected.items():
                np.testing.assert_allclose(got[name].stats.gram, e.stats.gram, rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(got[name].cross, e.cross, rtol=1e-5, atol=1e-4)
        for view in stage:
            w = view.layer.weight.const_value.numpy()
            params[view.layer.weight.name] = view.weight_back(prune_2d(view.weight2d(w), parse_pattern("2:4"), "magnitude", None), w.shape)
        if k + 1 < len(stages):
            dense, pruned = walk.run(k + 1, dense, None), walk.run(k + 1, pruned, params)
    assert params  # every stage was pruned and walked


def test_segment_sessions_read_only_their_own_weights(mlp, mlp_calib, monkeypatch) -> None:  # noqa: ANN001
    """A segment of the sequential sweep reads the weights of its layers, not the model's:
    on a 7B-width stack reading them all made every segment run hold 6 GB."""
    from sparsec.calib.runner import CalibrationRunner, SegmentWalk
    from sparsec.layer_view import view_of
    from sparsec.passes.analysis.layer_stats import layer_stages

    views = [view_of(layer) for layer in find_layers(mlp)]
    stages = layer_stages(mlp, views)
    runner = CalibrationRunner(mlp, mlp_calib, views=views)
    walk = SegmentWalk.plan(runner, stages)
    assert walk is not None and len(stages) >= 2
    read: list[str] = []
    original = runner.base_weight
    monkeypatch.setattr(runner, "base_weight", lambda name: read.append(name) or original(name))
    store = walk.run(0, [], None)
    for k, stage in enumerate(stages[:-1]):
        read.clear()
        store = walk.run(k + 1, store, None)
        assert sorted(read) == sorted(v.layer.weight.name for v in stage), k


def test_segmented_and_prefix_apply_agree(correlated) -> None:  # noqa: ANN001
    calib = CalibrationData({"x": _shifted_inputs(correlated, 512, seed=1)}, batch_size=128)
    results = []
    for segmented in (True, False):
        model = _block()
        plan = [(layer, parse_pattern("2:4")) for layer in find_layers(model)]
        apply_plan(model, plan, "sparsegpt", calib, progress=False, segmented=segmented)
        results.append({k: v.const_value.numpy() for k, v in model.graph.initializers.items()})
    for name, value in results[0].items():
        np.testing.assert_allclose(value, results[1][name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("pattern", ["2:4", "u:0.6"])
def test_refit_kept_weights_is_the_masked_least_squares_optimum(correlated, pattern: str) -> None:  # noqa: ANN001
    from sparsec.passes.sparsify.criteria import refit_kept_weights

    x = correlated(1024, 32, seed=4)
    w = np.random.default_rng(8).standard_normal((24, 32)).astype(np.float32)
    stats = LayerStats(x.T @ x, len(x))
    obs = prune_2d(w, parse_pattern(pattern), "sparsegpt", stats)
    refit = refit_kept_weights(obs, w, stats, damp=0.0)
    np.testing.assert_array_equal(refit != 0, obs != 0)  # same mask
    for r in range(w.shape[0]):  # each row: least squares on its kept columns
        s = np.flatnonzero(obs[r])
        expected = np.linalg.lstsq(x[:, s].astype(np.float64), (x @ w[r]).astype(np.float64), rcond=None)[0]
        np.testing.assert_allclose(refit[r, s], expected, rtol=2e-3, atol=2e-3)

    def err(new: np.ndarray) -> float:
        return float(np.linalg.norm(x @ (w - new).T))

    assert err(refit) < err(obs)


def test_residual_target_absorbs_the_skip_error(correlated) -> None:  # noqa: ANN001
    x = correlated(2048, 32, seed=2)
    xp = (x + 0.1 * correlated(2048, 32, seed=3)).astype(np.float32)
    rng = np.random.default_rng(11)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    skip_err = (xp @ rng.standard_normal((32, 16)) * 0.2).astype(np.float32)  # R - R~, partly explainable by X~
    stats = LayerStats(xp.T @ xp, len(x))
    plain = dense_target(w, stats, xp.T @ x, damp=1e-6)
    with_skip = dense_target(w, stats, xp.T @ x, damp=1e-6, resid=xp.T @ skip_err)

    def block_err(t: np.ndarray) -> float:  # ||X~ T^T + R~ - (X W^T + R)||
        return float(np.linalg.norm(xp @ t.T - x @ w.T - skip_err))

    assert block_err(with_skip) < 0.5 * block_err(plain), (block_err(with_skip), block_err(plain))


def test_residual_of_finds_the_skip() -> None:
    from sparsec.layer_view import residual_of

    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    res (float[N, 8] x) => (float[N, 8] y) {
        h = MatMul(x, w)
        hb = Add(h, b)
        y = Add(hb, x)
    }
    """
    model = make_model(text, w=np.eye(8, dtype=np.float32), b=np.zeros(8, np.float32))
    assert residual_of(find_layers(model)[0]) == "x"
    assert residual_of(find_layers(_block())[0]) is None  # MatMul -> Add(bias) -> LayerNorm: no skip


def test_sequential_sparsegpt_with_skip_connection(correlated) -> None:  # noqa: ANN001
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    skip (float[N, 32] x) => (float[N, 16] y) {
        h = MatMul(x, w1)
        hb = Add(h, b1)
        s = Add(hb, x)
        n = LayerNormalization<axis = -1>(s, g1, s1)
        h2 = MatMul(n, w2)
        s2 = Add(h2, n)
        y = MatMul(s2, w3)
    }
    """
    rng = np.random.default_rng(0)
    dense = make_model(
        text, w1=(rng.standard_normal((32, 32)) / 6).astype(np.float32), b1=rng.standard_normal(32).astype(np.float32),
        g1=np.ones(32, np.float32), s1=np.zeros(32, np.float32), w2=(rng.standard_normal((32, 32)) / 6).astype(np.float32),
        w3=(rng.standard_normal((32, 16)) / 6).astype(np.float32),
    )
    calib = CalibrationData({"x": _shifted_inputs(correlated, 1024, seed=1)}, batch_size=256)
    x = _shifted_inputs(correlated, 256, seed=9)
    ref = evaluate(dense, {"x": x})[0]
    errs = {}
    for residual in (False, True):
        model = dense.clone()
        plan = [(layer, parse_pattern("2:4")) for layer in find_layers(model)]
        apply_plan(model, plan, "sparsegpt", calib, recon=Reconstruction(residual=residual), progress=False)
        for layer in find_layers(model):
            assert nm_violations(layer.weight.const_value.numpy(), 2, 4, axis=layer.reduction_axis) == 0
        errs[residual] = float(np.linalg.norm(evaluate(model, {"x": x})[0] - ref) / np.linalg.norm(ref))
    assert np.isfinite(errs[True]) and errs[True] < 0.5, errs
