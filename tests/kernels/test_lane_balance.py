"""Channel permutations for the NCHWc conv kernel (backends/ort/lane_balance.py): exact rewrites that
group output channels of similar density into the kernel's 16-lane blocks."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from sparsec.backends.ort.lane_balance import balance_conv_lanes, pairs

from .conftest import randomize_batchnorms


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: the hidden channels pass through BN, ReLU6 and a depthwise conv only."""

    def __init__(self, c: int, hidden: int, residual: bool) -> None:
        super().__init__()
        self.expand = torch.nn.Conv2d(c, hidden, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(hidden)
        self.dw = torch.nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(hidden)
        self.project = torch.nn.Conv2d(hidden, c, 1)
        self.residual = residual

    def forward(self, x):  # noqa: ANN001, ANN201
        y = self.project(torch.nn.functional.relu6(self.bn2(self.dw(torch.nn.functional.relu6(self.bn1(self.expand(x)))))))
        return x + y if self.residual else y


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = InvertedResidual(32, 96, residual=True)
        self.b = InvertedResidual(32, 128, residual=False)
        self.c = torch.nn.Conv2d(32, 48, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.c(self.b(self.a(x))) * 0.5


def _model() -> tuple[ir.Model, dict[str, np.ndarray]]:
    from sparsec.capture import from_torch
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    torch.manual_seed(0)
    net = Net().eval()
    randomize_batchnorms(net)
    x = torch.randn(1, 32, 12, 12)
    model = from_torch(net, (x,), dynamic_batch=False)
    PassManager(parse_pipeline("sparsify{pattern=u:0.8 op_types=Conv min_params=1},legalize-dense")).run(model, PassContext())
    return model, {model.graph.inputs[0].name: x.numpy()}


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from sparsec.ir.io import model_bytes

    return ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_permuted_channels_leave_the_outputs_and_cut_the_kernels_pairs():
    model, feeds = _model()
    before = _run(model, feeds)
    weights_before = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    records = balance_conv_lanes(model)
    permuted = [r for r in records if r["permuted"]]
    assert permuted, records
    for r in permuted:
        assert r["pairs_after"] <= 0.98 * r["pairs_before"] and r["readers"]
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    # Only reorders: every weight keeps its values (as a multiset) and its zero count.
    for name, old in weights_before.items():
        new = model.graph.initializers[name].const_value.numpy()
        np.testing.assert_array_equal(np.sort(new, axis=None), np.sort(old, axis=None))


def test_channels_that_reach_the_graph_input_or_output_stay_in_place():
    model, _ = _model()
    records = {r["conv"]: r for r in balance_conv_lanes(model)}
    convs = [n for n in model.graph if n.op_type == "Conv"]
    by_role = {n.name: n for n in convs}
    # The first block's project conv feeds a residual Add with the graph input; the last conv feeds the
    # Mul to the output (a scalar constant, but then the graph output): neither is a group.
    first_project, last = convs[2], convs[-1]
    assert first_project.name not in records and last.name not in records
    # The second block's project output reaches only the last conv: a group, permuted or not.
    assert convs[5].name in records and records[convs[5].name]["readers"] == [last.name]
    assert set(by_role) >= set(records)


class Stream(torch.nn.Module):
    """A residual stream: written by the stem and two project convs, joined by adds, read by the
    expand convs and the head; then a graph output that stays as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(8, 32, 3, 1, 1)
        self.a = InvertedResidual(32, 96, residual=True)
        self.b = InvertedResidual(32, 64, residual=True)
        self.head = torch.nn.Conv2d(32, 16, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.b(self.a(self.stem(x))))


def test_a_residual_stream_is_one_group_permuted_everywhere():
    from sparsec.capture import from_torch
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    torch.manual_seed(3)
    x = torch.randn(1, 8, 10, 10)
    model = from_torch(Stream().eval(), (x,), dynamic_batch=False)
    PassManager(parse_pipeline("sparsify{pattern=u:0.85 op_types=Conv min_params=1},legalize-dense")).run(model, PassContext())
    feeds = {model.graph.inputs[0].name: x.numpy()}
    before = _run(model, feeds)
    convs = [n.name for n in model.graph if n.op_type == "Conv"]  # stem, a: expand dw project, b: ..., head
    records = {r["conv"]: r for r in balance_conv_lanes(model)}
    stream = records[convs[0]]
    assert set(stream["writers"]) == {convs[0], convs[3], convs[6]}
    assert set(stream["readers"]) == {convs[1], convs[4], convs[7]}
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_pairs_counts_each_blocks_fullest_lane():
    w = np.zeros((32, 32, 1, 1), np.float32)
    w[0, :5] = 1.0  # one lane keeps 5 of input block 0
    w[20, 16:18] = 1.0  # one lane of output block 1 keeps 2 of input block 1
    assert pairs(w) == 5 + 2


@pytest.mark.parametrize("balance", [True, False])
def test_the_lowering_pass_permutes_only_when_asked(balance):
    from sparsec.backends.ort.nchwc_convs import nchwc_available

    if not nchwc_available():
        pytest.skip("the NCHWc conv kernel needs the built kernels and AVX-512")
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    model, feeds = _model()
    before = _run(model, feeds)
    ctx = PassContext()
    PassManager(parse_pipeline(f"lower-conv-nchwc{{measure=all balance={str(balance).lower()}}}")).run(model, ctx)
    decisions = [d for d in ctx.decisions if d.get("pass") == "lower-conv-nchwc"]
    assert any(d["decision"] == "kernel SparseConvNchwc" for d in decisions)
    assert any(d["decision"] == "channels permuted" for d in decisions) == balance
    from sparsec.backends.ort.sparse_ops import make_session
    from sparsec.ir.io import model_bytes

    got = make_session(model_bytes(model), 2).run(None, feeds)[0]
    np.testing.assert_allclose(got, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
