"""The `obs` crop criterion and the residual reconstruction target."""

from __future__ import annotations

import numpy as np

from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import mean_cosine
from sparsec.calib.runner import run_outputs
from sparsec.layers import find_layers
from sparsec.passes.structural.obs import obs_order
from sparsec.passes.structural.reconstruct import residual_of
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model

from .conftest import MLP_TEXT, correlated


def test_a_redundant_input_goes_first_and_a_needed_one_last():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 6))
    x[:, 5] = x[:, 2]  # input 5 repeats input 2: either can go at no cost
    w2 = rng.standard_normal((4, 6))
    w2[:, 0] *= 10  # the most needed input
    order = obs_order(x.T @ x, w2)
    assert sorted(np.argsort(order)[:1].tolist())[0] in (2, 5)
    assert int(np.argmax(order)) == 0
    assert np.array_equal(np.sort(order * 6), np.arange(6))


def _duplicated_mlp():  # noqa: ANN202
    """16 -> 64 -> 8 with hidden units 32..63 exact copies of 0..31 (same pre-activation)."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((16, 32)) / 4).astype(np.float32)
    b1 = (0.3 + 0.1 * rng.standard_normal(32)).astype(np.float32)
    scale = np.exp(0.3 * rng.standard_normal(64)).astype(np.float32)  # activation-based scores differ within pairs
    w2 = (rng.standard_normal((64, 8)) / 8).astype(np.float32)
    return make_model(MLP_TEXT, w1=np.hstack([w1, w1]) * scale[None, :], b1=np.concatenate([b1, b1]) * scale,
                      w2=w2 / scale[:, None], b2=np.zeros(8, np.float32))


def _crop(model, calib, criterion: str):  # noqa: ANN001, ANN202
    m = model.clone()
    ctx = PassContext(calibration=calib)
    PassManager(parse_pipeline(f"crop-channels{{ratio=0.5 multiple=1 criterion={criterion}}}"), verify_numerics=False).run(m, ctx)
    removed = next(d["removed"] for d in ctx.decisions if d.get("param") == "w2")
    return m, removed


def test_obs_removes_redundant_units_where_activation_norms_remove_needed_ones():
    model = _duplicated_mlp()
    calib = CalibrationData({"x": correlated(256, 16, seed=1)}, batch_size=32)
    held = CalibrationData({"x": correlated(128, 16, seed=7)}, batch_size=32)
    dense = run_outputs(model, held)
    cosine, pairs_lost = {}, {}
    for criterion in ("obs", "activation"):
        cropped, removed = _crop(model, calib, criterion)
        pairs_lost[criterion] = 32 - len({i % 32 for i in removed})  # pairs with both units gone
        cosine[criterion] = mean_cosine(dense, run_outputs(cropped, held))
    # OBS takes mostly one unit of a pair (its twin takes over after the refit); both go only
    # where a unit adds little anyway. Activation norms cannot see the redundancy.
    assert pairs_lost["obs"] <= 3 and pairs_lost["activation"] >= 6, pairs_lost
    assert cosine["obs"] > 0.99 and 1 - cosine["obs"] < 0.5 * (1 - cosine["activation"]), cosine


RESIDUAL_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
res (float[N, 16] x) => (float[N, 16] y) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    o = MatMul(r, w2)
    ob = Add(o, b2)
    s = Add(x, ob)
    h3 = MatMul(s, w3)
    h3b = Add(h3, b3)
    r3 = Relu(h3b)
    o4 = MatMul(r3, w4)
    o4b = Add(o4, b4)
    y = Add(s, o4b)
}
"""


def _residual_model():  # noqa: ANN202
    rng = np.random.default_rng(5)

    def w(*shape: int, s: float) -> np.ndarray:
        return (s * rng.standard_normal(shape)).astype(np.float32)

    return make_model(RESIDUAL_TEXT, w1=w(16, 48, s=0.3), b1=w(48, s=0.1), w2=w(48, 16, s=0.3), b2=w(16, s=0.1),
                      w3=w(16, 48, s=0.3), b3=w(48, s=0.1), w4=w(48, 16, s=0.3), b4=w(16, s=0.1))


def test_residual_of_finds_the_stream_past_the_bias():
    model = _residual_model()
    found = {layer.weight.name: residual_of(model, layer) for layer in find_layers(model)}
    assert found == {"w1": None, "w2": "x", "w3": None, "w4": "s"}


def test_the_residual_target_repairs_the_upstream_error():
    model = _residual_model()
    calib = CalibrationData({"x": correlated(512, 16, seed=1)}, batch_size=64)
    held = CalibrationData({"x": correlated(256, 16, seed=7)}, batch_size=64)
    dense = run_outputs(model, held)
    errors = {}
    for target in ("layer", "residual"):
        m = model.clone()
        ctx = PassContext(calibration=calib)
        records = PassManager(parse_pipeline(f"crop-channels{{ratio=0.6 multiple=1 reconstruct_target={target}}}"),
                              verify_numerics=False).run(m, ctx)
        assert records[-1].stats["layers_reconstructed"] == 2
        out = run_outputs(m, held)[0]
        errors[target] = float(np.linalg.norm(out - dense[0]) / np.linalg.norm(dense[0]))
    assert errors["residual"] < 0.98 * errors["layer"], errors


def test_head_dims_false_crops_whole_heads_only():
    from sparsec.capture import load_any

    bert, _ = load_any("zoo:bert")  # 4 heads x 64 dims
    q = next(n for n in bert.graph.initializers if n.endswith("layers.0.attn.q_proj.weight"))
    for text, whole_heads in (("crop-channels{ratio=0.25 head_dims=false}", True), ("crop-channels{ratio=0.25}", False)):
        m = bert.clone()
        PassManager(parse_pipeline(text), verify_numerics=False).run(m, PassContext())
        kept = m.graph.initializers[q].const_value.shape[0]
        assert kept < 256
        # Whole heads of 64 rows go, or (head dims cropped too) a count no multiple of 64 remains.
        assert (kept % 64 == 0) == whole_heads, (text, kept)
