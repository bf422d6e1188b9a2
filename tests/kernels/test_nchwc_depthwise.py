"""A depthwise conv run inside the sparse 1x1 conv that reads it (kernels/src/nchwc_dw_avx512.c,
backends/ort/nchwc_dw_fusion.py): the kernel and its ONNX Runtime op vs float64 torch, and the
lowering of MobileNetV2-style inverted residual blocks (expand, depthwise, project) captured from
torch and pruned 80% unstructured by the compiler's own pass."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsec import kernels as sk
from sparsec.kernels.errors import PackedFormatError

from .conftest import exported_and_pruned, pruned_onnx, randomize_batchnorms

pytestmark = pytest.mark.skipif(not sk.kernels_available() or "avx512" not in sk.available_isas(),
                                reason="the NCHWc conv kernel needs the built kernels and AVX-512")

# (batch, channels, cout, h, w, k, stride, pads (t, l, b, r), dilation): the row kernels (3x3 and
# 5x5, strides 1 and 2), the per-position path (dilation 2, 7x1, stride 3), rows narrower and
# wider than a row segment (8 or 6), channels not multiples of 16, a 1x1 plane, batch 2 with few
# rows (output blocks split in parts).
SHAPES = [
    (1, 96, 24, 56, 56, 3, 1, (1, 1, 1, 1), 1),
    (1, 48, 24, 29, 30, 3, 2, (1, 1, 1, 1), 1),
    (2, 40, 20, 7, 7, 3, 1, (1, 1, 1, 1), 1),
    (1, 160, 40, 7, 7, 3, 1, (1, 1, 1, 1), 1),
    (1, 32, 16, 11, 13, 5, 1, (2, 2, 2, 2), 1),
    (1, 32, 16, 15, 15, 5, 2, (2, 1, 2, 2), 1),
    (1, 24, 16, 9, 9, 3, 1, (2, 2, 2, 2), 2),
    (1, 16, 8, 10, 5, 3, 3, (1, 0, 1, 0), 1),
    (1, 16, 16, 1, 1, 3, 1, (1, 1, 1, 1), 1),
    (2, 64, 32, 3, 3, 3, 1, (1, 1, 1, 1), 1),
]


def _reference(x, dw, db, w1, b1, stride, pads, dil, act, sum_=None):
    pt, pl, pb, pr = pads
    xp = torch.from_numpy(np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr))))
    t = torch.nn.functional.conv2d(xp, torch.from_numpy(dw).double(), torch.from_numpy(db).double(), stride=stride,
                                   dilation=dil, groups=x.shape[1])
    t = t.clamp(0, 6) if act == "clip" else t.relu() if act == "relu" else t
    y = torch.nn.functional.conv2d(t, torch.from_numpy(w1).double(), torch.from_numpy(b1).double()).numpy()
    return y if sum_ is None else y + sum_


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"d{s[8]}")
def test_fused_depthwise_matches_a_float64_depthwise_then_1x1(shape):
    from sparsec.kernels.nchwc_conv import Depthwise, nchwc_conv
    from sparsec.kernels.packing_nchwc import from_nchwc, pack_nchwc, to_nchwc

    b, c, co, h, w_, k, s, pads, dil = shape
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    x = rng.standard_normal((b, c, h, w_)).astype(np.float32)
    dw = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    db = rng.standard_normal(c).astype(np.float32)
    w1 = rng.standard_normal((co, c, 1, 1)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.8] = 0.0
    b1 = rng.standard_normal(co).astype(np.float32)
    packed = pack_nchwc(w1)
    for act, with_sum in (("clip", False), ("relu", True), ("none", False)):
        ref0 = _reference(x, dw, db, w1, b1, s, pads, dil, act)
        sum_ = rng.standard_normal(ref0.shape).astype(np.float32) if with_sum else None
        ref = ref0 if sum_ is None else ref0 + sum_
        d = Depthwise(dw, db, (s, s), pads, (dil, dil), act=act)
        y = nchwc_conv(to_nchwc(x), packed, bias=b1, sum_=None if sum_ is None else to_nchwc(sum_), depthwise=d,
                       threads=2)
        got = from_nchwc(y, co)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_fused_depthwise_without_biases():
    from sparsec.kernels.nchwc_conv import Depthwise, nchwc_conv
    from sparsec.kernels.packing_nchwc import from_nchwc, pack_nchwc, to_nchwc

    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 32, 9, 9)).astype(np.float32)
    dw = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((16, 32, 1, 1)).astype(np.float32)
    ref = _reference(x, dw, np.zeros(32, np.float32), w1, np.zeros(16, np.float32), 1, (1, 1, 1, 1), 1, "relu")
    y = nchwc_conv(to_nchwc(x), pack_nchwc(w1), depthwise=Depthwise(dw, None, pads=(1, 1, 1, 1), act="relu"), threads=2)
    np.testing.assert_allclose(from_nchwc(y, 16), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_depthwise_needs_a_1x1_conv_over_its_channels():
    from sparsec.kernels.nchwc_conv import Depthwise, nchwc_conv
    from sparsec.kernels.packing_nchwc import pack_nchwc, to_nchwc

    x = to_nchwc(np.ones((1, 32, 8, 8), np.float32))
    d = Depthwise(np.ones((32, 1, 3, 3), np.float32), pads=(1, 1, 1, 1))
    with pytest.raises(PackedFormatError, match="1x1"):
        nchwc_conv(x, pack_nchwc(np.ones((16, 32, 3, 3), np.float32)), depthwise=d)
    with pytest.raises(PackedFormatError, match="channels"):
        nchwc_conv(x, pack_nchwc(np.ones((16, 32, 1, 1), np.float32)),
                   depthwise=Depthwise(np.ones((16, 1, 3, 3), np.float32)))


def _fused_op_model(c, co, h, packed, dw_packed, dw_bias_len, stride=1):
    node = helper.make_node(
        "SparseConvNchwc", ["x", "idx", "vals", "b", "", "offs", "dww", "dwb"], ["y"], domain="com.sparsec.kernels",
        cout=co, cin=c, kh=1, kw=1, k=packed.k, stride_h=1, stride_w=1, pad_t=0, pad_l=0, pad_b=0, pad_r=0, dil_h=1,
        dil_w=1, act=0, has_bias=1, has_sum=0, has_offs=1, has_dw=1, dw_kh=3, dw_kw=3, dw_stride_h=stride,
        dw_stride_w=stride, dw_pad_t=1, dw_pad_l=1, dw_pad_b=1, dw_pad_r=1, dw_dil_h=1, dw_dil_w=1, dw_act=2,
        dw_has_bias=1, dw_clip_lo=0.0, dw_clip_hi=6.0)
    ob = -(-co // 16) * 16
    bias = np.zeros(ob, np.float32)
    bias[:co] = np.linspace(-1, 1, co)  # zero past the real channels, as ORT pads NCHWc biases
    inits = [numpy_helper.from_array(packed.idx.reshape(-1), "idx"), numpy_helper.from_array(packed.vals.reshape(-1), "vals"),
             numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(packed.offs.reshape(-1), "offs"),
             numpy_helper.from_array(dw_packed.reshape(-1), "dww"),
             numpy_helper.from_array(np.linspace(-2, 2, dw_bias_len).astype(np.float32), "dwb")]
    ho = (h - 1) // stride + 1
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, ob, ho, ho])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.sparsec.kernels", 1)])


def _session(model):
    from sparsec.backends.ort.sparse_ops import make_session, session_options

    opts = session_options(2)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return make_session(model.SerializeToString(), 2, options=opts)


@pytest.mark.parametrize("stride", [1, 2])
def test_ort_op_with_a_depthwise_conv_runs_like_the_kernel(stride):
    from sparsec.kernels.nchwc_conv import Depthwise, nchwc_conv, pack_depthwise
    from sparsec.kernels.packing_nchwc import pack_nchwc, to_nchwc

    rng = np.random.default_rng(stride)
    c, co, h = 48, 24, 15
    dw = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((co, c, 1, 1)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.8] = 0.0
    p = pack_nchwc(w1)
    sess = _session(_fused_op_model(c, co, h, p, pack_depthwise(dw), c, stride))
    x = to_nchwc(rng.standard_normal((1, c, h, h)).astype(np.float32))
    got = sess.run(None, {"x": x.reshape(1, c, h, h)})[0]
    d = Depthwise(dw, np.linspace(-2, 2, c).astype(np.float32), (stride, stride), (1, 1, 1, 1), act="clip")
    want = nchwc_conv(x, p, bias=np.linspace(-1, 1, co).astype(np.float32), depthwise=d, threads=2)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_ort_op_refuses_a_depthwise_weight_of_the_wrong_size():
    from sparsec.kernels.nchwc_conv import pack_depthwise
    from sparsec.kernels.packing_nchwc import pack_nchwc

    rng = np.random.default_rng(0)
    p = pack_nchwc(rng.standard_normal((16, 32, 1, 1)).astype(np.float32))
    dw = pack_depthwise(rng.standard_normal((32, 1, 3, 3)).astype(np.float32))
    with pytest.raises(PackedFormatError, match="dw_weight"):
        _session(_fused_op_model(32, 16, 8, p, dw[:1], 32))
    with pytest.raises(PackedFormatError, match="dw_bias"):
        _session(_fused_op_model(32, 16, 8, p, dw, 20))


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3 (BN, ReLU6 each), project 1x1 (BN)."""

    def __init__(self, c: int, out: int, stride: int, taps_reader: bool = False) -> None:
        super().__init__()
        hid = 6 * c
        self.expand = torch.nn.Sequential(torch.nn.Conv2d(c, hid, 1, bias=False), torch.nn.BatchNorm2d(hid), torch.nn.ReLU6())
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                                      torch.nn.BatchNorm2d(hid), torch.nn.ReLU6())
        self.project = torch.nn.Sequential(torch.nn.Conv2d(hid, out, 1, bias=False), torch.nn.BatchNorm2d(out))
        self.residual = stride == 1 and c == out
        self.taps_reader = taps_reader  # a second reader of the depthwise output: not fusable

    def forward(self, x):  # noqa: ANN001, ANN201
        d = self.dw(self.expand(x))
        y = self.project(d)
        if self.taps_reader:
            y = y + d.mean((1,), keepdim=True)
        return x + y if self.residual else y


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU6())
        self.blocks = torch.nn.Sequential(InvertedResidual(32, 32, 1), InvertedResidual(32, 48, 2),
                                          InvertedResidual(48, 48, 1, taps_reader=True), InvertedResidual(48, 64, 2))
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def mobilenet_like() -> tuple[bytes, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    net = Net().eval()
    randomize_batchnorms(net)
    return pruned_onnx(net, torch.randn(1, 3, 48, 48), "sparsify{pattern=u:0.8 op_types=Conv}")


def _ops(model: bytes) -> list[tuple[str, str, int]]:
    out = []
    for n in onnx.load_from_string(model).graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        out.append((n.domain, n.op_type, int(a.get("has_dw", 0)) if n.op_type == "SparseConvNchwc" else a.get("group", 1)))
    return out


def test_project_convs_run_their_depthwise_conv_inside_with_the_dense_models_outputs(mobilenet_like):
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs
    from sparsec.backends.ort.sparse_ops import make_session

    data, feeds = mobilenet_like
    fused = lower_nchwc_convs(data, feeds, measure=False)
    plain = lower_nchwc_convs(data, feeds, measure=False, fuse_depthwise=False)
    assert fused.lowered == plain.lowered >= 7
    ops, plain_ops = _ops(fused.model), _ops(plain.model)
    depthwise = [o for o in plain_ops if o[1] == "Conv" and o[2] > 1]
    # Four blocks: the third's depthwise output has a second reader, so three fuse.
    assert len(depthwise) == 4 and fused.depthwise_fused == 3
    assert ops.count(("com.sparsec.kernels", "SparseConvNchwc", 1)) == 3
    assert len([o for o in ops if o[1] == "Conv" and o[2] > 1]) == 1
    assert sum(bool(c.depthwise) for c in fused.convs) == 3 and fused.to_dict()["depthwise_fused"] == 3
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for low in (fused, plain):
        got = make_session(low.model, 2).run(None, feeds)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_measured_fusion_records_the_times_it_decided_on(mobilenet_like):
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs

    data, feeds = mobilenet_like
    low = lower_nchwc_convs(data, feeds, runs=5)
    from sparsec.backends.ort.nchwc_convs import MIN_GAIN_MS

    for c in low.convs:
        if c.depthwise:  # kept only where the fused node beat the two it replaces
            assert c.sparse and c.fused_ms is not None and c.depthwise_ms is not None
            # a conv that gained alone, or one whose gain alone was below an op call's cost
            assert c.fused_ms < c.sparse_ms + c.depthwise_ms or c.fused_ms + MIN_GAIN_MS <= c.dense_ms + c.depthwise_ms


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_mobilenetv2_exports_of_both_exporters_run_their_depthwise_convs_inside(exporter, tmp_path):
    """ONNX files written by torch's two exporters (opset 17: ReLU6 as Clip with constant
    inputs, BatchNorm left for ORT to fold), read back as a user's file would be."""
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs
    from sparsec.backends.ort.sparse_ops import make_session
    from sparsec.models_zoo.mobilenet import MobileNetConfig, build_mobilenet

    cfg = MobileNetConfig(image_size=64, stages=((1, 16, 1, 1, False), (6, 32, 2, 2, False), (6, 64, 2, 2, False)),
                          head_channels=256, num_classes=10)
    torch.manual_seed(3)
    net, x = build_mobilenet(cfg).eval(), torch.randn(1, 3, 64, 64)
    randomize_batchnorms(net)
    data, feeds = exported_and_pruned(net, x, tmp_path / f"mobilenetv2-{exporter}.onnx", exporter,
                                      "sparsify{pattern=u:0.8 op_types=Conv min_params=1}")
    low = lower_nchwc_convs(data, feeds, measure=False)
    # Five blocks; the first (expansion 1) has no expand conv and its depthwise reads the stem:
    # every block's project conv is on the kernel with its depthwise conv inside.
    assert low.depthwise_fused == 5, low.to_dict()
    assert [o[2] for o in _ops(low.model) if o[1] == "SparseConvNchwc"].count(1) == 5
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = make_session(low.model, 2).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_a_depthwise_conv_without_bias_or_norm_fuses_too():
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs
    from sparsec.backends.ort.sparse_ops import make_session

    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(16, 96, 1), torch.nn.ReLU(), torch.nn.Conv2d(96, 96, 3, 1, 1, groups=96, bias=False),
        torch.nn.ReLU(), torch.nn.Conv2d(96, 32, 1, bias=False)).eval()
    data, feeds = pruned_onnx(net, torch.randn(1, 16, 20, 20), "sparsify{pattern=u:0.8 op_types=Conv min_params=1}")
    low = lower_nchwc_convs(data, feeds, measure=False)
    assert low.depthwise_fused == 1
    node = next(n for n in onnx.load_from_string(low.model).graph.node if n.name == next(c.node for c in low.convs if c.depthwise))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["has_dw"] == 1 and attrs["dw_has_bias"] == 0 and attrs["dw_act"] == 1
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = make_session(low.model, 2).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_convs_the_fallback_names_stay_dense(mobilenet_like):
    from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs

    data, feeds = mobilenet_like
    every = lower_nchwc_convs(data, feeds, measure=False)
    keep = {every.convs[0].mask_key, every.convs[3].mask_key}
    low = lower_nchwc_convs(data, feeds, measure=False, keep_dense=keep)
    assert low.lowered == every.lowered - 2 and not any(c.mask_key in keep for c in low.convs)
    assert low.skipped["kept dense: the compiled model was not faster with it sparse (never-slower fallback)"] == 2


def test_the_compile_moves_sparse_convs_back_when_the_model_is_not_faster(monkeypatch, tmp_path):
    """The end-to-end check told twice that the compiled model is slower: the never-slower
    fallback moves NCHWc kernel convs back to dense (least profiled gain first) and rebuilds."""
    import sparsec.compiler as compiler
    from sparsec.compiler import CompileOptions, compile_file

    real, calls = compiler._latency, []

    def first_slower(dense_bytes, build, feeds, options):  # noqa: ANN001, ANN202
        lat = real(dense_bytes, build, feeds, options)
        calls.append(build)
        # "slower" twice: 1 then 2 more layers go back, convs among them (the zoo model has one
        # matrix product that could be on a kernel too)
        return {**lat, "faster": False, "speedup": 0.9} if len(calls) <= 2 else lat

    monkeypatch.setattr(compiler, "_latency", first_slower)
    result = compile_file("zoo:mobilenet", tmp_path / "out", CompileOptions(sparsity="80%"))
    first = next(r for r in calls[0].records if r.name == "lower-conv-nchwc")
    if not first.stats.get("convs_lowered"):
        pytest.skip("no conv measured faster on the kernel in the first build (a noisy machine)")
    fallback = result.manifest["lowering"]["never_slower"]
    convs = {d["weight"] for d in calls[0].ctx.decisions
             if d.get("pass") == "lower-conv-nchwc" and str(d.get("decision", "")).startswith("kernel") and "weight" in d}
    moved = [m["weight"] for m in fallback["moved_to_dense"]]
    assert moved and set(moved) <= convs | {d["weight"] for d in calls[0].ctx.decisions if d.get("pass") == "lower-nm-kernels"
                                             and "weight" in d}
    assert set(moved) & convs, fallback
    # The rebuild measures its convs again (others may pass this time); the moved ones stay dense.
    on_kernel = {d["weight"] for d in calls[-1].ctx.decisions if d.get("pass") == "lower-conv-nchwc"
                 and str(d.get("decision", "")).startswith("kernel") and "weight" in d}
    assert not on_kernel & set(moved)
