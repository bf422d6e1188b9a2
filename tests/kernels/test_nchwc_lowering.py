"""Sparse convs moved onto the NCHWc kernel inside ONNX Runtime's NCHWc layout (backends/ort/nchwc_convs.py):
a small residual CNN captured from torch and pruned 2:4 or 85% unstructured by the compiler's own
passes, and torchvision's ResNet-18 structure exported by both exporters at 80% unstructured."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs, nchwc_available

from .conftest import exported_and_pruned, pruned_onnx, randomize_batchnorms

pytestmark = pytest.mark.skipif(not nchwc_available(), reason="the NCHWc conv kernel needs the built kernels and AVX-512")


class Block(torch.nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(c)
        self.b = torch.nn.Conv2d(c, c, 1)
        self.down = torch.nn.Conv2d(c, c, 1, stride) if stride > 1 else torch.nn.Identity()

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.relu(self.b(torch.relu(self.bn(self.a(x)))) + self.down(x))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, 2, 1)
        self.blocks = torch.nn.Sequential(Block(32, 1), Block(32, 2), torch.nn.Conv2d(32, 48, 1), torch.nn.ReLU6(), Block(48, 1))
        self.head = torch.nn.Linear(48, 10)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def pruned() -> tuple[bytes, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    net = Net().eval()
    randomize_batchnorms(net)
    return pruned_onnx(net, torch.randn(1, 3, 40, 40), "nm-sparsity{n=2 m=4 op_types=Conv min_params=1}")


def _run(model: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from sparsec.backends.ort.sparse_ops import make_session

    return make_session(model, 2).run(None, feeds)[0]


def test_every_eligible_conv_runs_on_the_kernel_with_the_dense_models_outputs(pruned):
    data, feeds = pruned
    low = lower_nchwc_convs(data, feeds, measure=False)
    import onnx

    ops = [(n.domain, n.op_type) for n in onnx.load_from_string(low.model).graph.node]
    assert low.lowered == len(low.convs) == ops.count(("com.sparsec.kernels", "SparseConvNchwc")) >= 6
    assert low.skipped.get("input not in NCHWc blocks (the stem)") == 1
    assert all(c.k == 8 for c in low.convs)
    # No reorders around the sparse convs: ORT's layout stays as it made it.
    assert ops.count(("com.microsoft.nchwc", "ReorderInput")) <= 1
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = _run(low.model, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_measured_lowering_keeps_only_convs_the_kernel_beats(pruned):
    data, feeds = pruned
    low = lower_nchwc_convs(data, feeds, measure=True, runs=5)
    assert low.convs and all(c.dense_ms is not None and c.sparse_ms is not None for c in low.convs)
    for c in low.convs:
        if c.sparse:  # faster per conv by 2% and 10 us (the op's call overhead the profiler leaves out)
            assert c.dense_ms >= 1.02 * c.sparse_ms and c.dense_ms - c.sparse_ms >= 0.01, c
        else:
            assert c.reason, c
    # With any conv sparse, the whole model was measured faster with them than without.
    if low.lowered:
        assert low.end_to_end and low.end_to_end[-1]["speedup"] >= 1.02 and low.end_to_end[-1]["convs"] == low.lowered
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(_run(low.model, feeds), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert low.to_dict()["lowered"] == low.lowered


@pytest.fixture(scope="module")
def unstructured() -> tuple[bytes, dict[str, np.ndarray]]:
    torch.manual_seed(1)
    return pruned_onnx(Net().eval(), torch.randn(1, 3, 40, 40), "sparsify{pattern=u:0.85 op_types=Conv min_params=1}")


def test_unstructured_convs_run_on_the_kernel_with_blocks_of_their_own_length(unstructured):
    import onnx
    from onnx import numpy_helper

    data, feeds = unstructured
    low = lower_nchwc_convs(data, feeds, measure=False)
    m = onnx.load_from_string(low.model)
    convs = [n for n in m.graph.node if n.op_type == "SparseConvNchwc"]
    assert low.lowered == len(convs) >= 6 and all(c.k < 8 for c in low.convs)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    counts = np.concatenate([np.diff(inits[n.input[5]]) for n in convs])
    assert counts.min() < counts.max()  # pairs per block differ: not padded to one k per conv
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(_run(low.model, feeds), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torchvision_resnet18_export_at_80_percent_runs_on_the_kernel(exporter, tmp_path):
    """An export nobody here wrote (torchvision's ResNet-18 structure, opset 17, from the ONNX file)."""
    import onnx

    from sparsec.models_zoo.resnet18_tv import resnet18

    torch.manual_seed(2)
    net, x = resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    data, feeds = exported_and_pruned(net, x, tmp_path / f"resnet18-{exporter}.onnx", exporter,
                                      "sparsify{pattern=u:0.8 op_types=Conv}")
    low = lower_nchwc_convs(data, feeds, measure=False)
    ops = [n.op_type for n in onnx.load_from_string(low.model).graph.node]
    assert low.lowered == ops.count("SparseConvNchwc") >= 15  # every conv but the 3-channel stem
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(_run(low.model, feeds), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
