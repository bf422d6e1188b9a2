"""lower-conv-kernels and the SparseConv ORT op: sparse Conv (+BN, +Relu/Relu6) on the kernel,
outputs equal to the dense-but-pruned model, on ONNX-text graphs and real torch exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsec.calib.metrics import compare
from sparsec.kernels import PackedFormatError, available_isas, kernels_available
from sparsec.numerics import evaluate, sample_inputs
from sparsec.pm import PassContext, PassManager, parse_pipeline
from sparsec.testing import make_model, seeded

pytestmark = pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")

TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,24,13,11] x) => (float[1,40,7,6] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, w1)
  n1 = BatchNormalization (c1, s1, b1, m1, v1)
  r1 = Relu(n1)
  c2 = Conv (r1, w2, b2)
  r2 = Clip(c2, lo, hi)
  c3 = Conv <pads = [1,1,1,1], strides = [2,2]> (r2, w3)
  y = Relu(c3)
}
"""


def build():
    rng = np.random.default_rng(0)
    return make_model(
        TEXT,
        w1=seeded((32, 24, 3, 3), 1), s1=(rng.random(32) + 0.5).astype(np.float32), b1=seeded((32,), 2),
        m1=seeded((32,), 3), v1=(rng.random(32) + 0.5).astype(np.float32),
        w2=seeded((48, 32, 1, 1), 4), b2=seeded((48,), 5),
        lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32),
        w3=seeded((40, 48, 3, 3), 6),
    )


def lower(model, policy: str = "always"):
    records = PassManager(parse_pipeline(f"lower-conv-kernels{{policy={policy}}},legalize-dense")).run(model, PassContext())
    return records[0].stats


@pytest.mark.parametrize("prune", ["nm-sparsity{n=2 m=4 min_params=0}", "nm-sparsity{n=1 m=8 min_params=0}",
                                   "sparsify{pattern=u:0.85 min_params=0}"])
def test_lowered_graph_matches_the_pruned_one(prune, monkeypatch) -> None:
    model = build()
    PassManager(parse_pipeline(prune)).run(model, PassContext())
    feeds = sample_inputs(model, dims={})
    before = evaluate(model, feeds)
    stats = lower(model)
    assert stats["convs_lowered"] == 3, stats
    ops = [n.op_type for n in model.graph]
    assert ops == ["SparseConv"] * 3, ops  # BN folded, Relu and Clip(0, 6) fused
    acts = [next(a.value for a in n.attributes.values() if a.name == "act") for n in model.graph]
    assert acts == [1, 2, 1]
    for isa in available_isas():  # the op reads $SPARSEC_KERNEL_ISA when the session creates it
        monkeypatch.setenv("SPARSEC_KERNEL_ISA", isa)
        assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-5, isa


def test_auto_policy_keeps_layers_the_rule_predicts_no_gain_for() -> None:
    model = build()
    PassManager(parse_pipeline("nm-sparsity{n=2 m=4 min_params=0}")).run(model, PassContext())
    stats = lower(model, "auto")
    # 2:4 on a 13x11 map: the rule predicts the kernel slower than MLAS for every layer.
    assert stats["convs_lowered"] == 0 and len(stats["convs_kept_dense"]) == 3
    assert all("predicted" in r for r in stats["convs_kept_dense"].values())
    assert not any(n.domain for n in model.graph)


def _single_op_model(w: np.ndarray, h: int, w_in: int, attrs_h: int, attrs_w: int, corrupt: str | None = None):
    from sparsec.backends.ort.conv_ops import sparse_conv_node
    from sparsec.runtime import KERNEL_DOMAIN

    node, inits = sparse_conv_node("x", "y", w, "conv", attrs_h, attrs_w, 1, (1, 1, 1, 1), None, "none", 16)
    if corrupt == "perm":
        arr = onnx.numpy_helper.to_array(inits[0]).copy()
        arr[0] = arr[1]
        inits[0] = onnx.numpy_helper.from_array(arr, inits[0].name)
    elif corrupt == "taps":
        arr = onnx.numpy_helper.to_array(inits[2]).copy()
        arr[-1] = -3
        inits[2] = onnx.numpy_helper.from_array(arr, inits[2].name)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1], h, w_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(KERNEL_DOMAIN, 1)])


def test_op_runs_inputs_of_another_size_and_rejects_malformed_weights() -> None:
    import torch

    from sparsec.backends.ort.sparse_ops import make_session

    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 20, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    x = rng.standard_normal((1, 20, 9, 12)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1).numpy()
    for attrs_hw in ((9, 12), (5, 5)):  # precomputed offsets, and offsets computed for this call
        y = make_session(_single_op_model(w, 9, 12, *attrs_hw)).run(None, {"x": x})[0]
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    for corrupt in ("perm", "taps"):
        with pytest.raises(PackedFormatError, match="SparseConv"):
            make_session(_single_op_model(w, 9, 12, 9, 12, corrupt))


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_real_torch_exports_lower_and_match(name) -> None:
    """ResNet (bottlenecks, stride-2 3x3 and 1x1 downsample) and MobileNetV2 (ReLU6, depthwise
    left dense) built with the zoo builders at a small size, exported by torch."""
    from sparsec.capture import from_torch

    if name == "resnet":
        from sparsec.models_zoo.resnet import ResNetConfig, build_resnet, resnet_inputs

        cfg = ResNetConfig(image_size=16, stem_channels=16, widths=(8, 16), depths=(1, 1))
        module, inputs = build_resnet(cfg), resnet_inputs(1, cfg)
        prune = "nm-sparsity{n=2 m=4 min_params=0}"
    else:
        from sparsec.models_zoo.mobilenet import MobileNetConfig, build_mobilenet, mobilenet_inputs

        cfg = MobileNetConfig(image_size=16, stem_channels=16, head_channels=64,
                              stages=((1, 16, 1, 1, False), (6, 24, 2, 2, False)))
        module, inputs = build_mobilenet(cfg), mobilenet_inputs(1, cfg)
        prune = "sparsify{pattern=u:0.8 min_params=0 op_types=Conv}"
    model = from_torch(module, inputs, dynamic_batch=False)
    PassManager(parse_pipeline(prune)).run(model, PassContext())
    feeds = sample_inputs(model, dims={})
    before = evaluate(model, feeds)
    stats = lower(model)
    ops = [n.op_type for n in model.graph]
    assert stats["convs_lowered"] >= 4 and ops.count("SparseConv") == stats["convs_lowered"], (stats, ops)
    assert ops.count("BatchNormalization") == ops.count("Conv")  # only unpruned convs (stem, depthwise) keep theirs
    assert compare(before, evaluate(model, feeds)).rel_l2 < 1e-5
