"""Shared fixtures for the kernel tests: ISA parametrization and a dense reference."""

from __future__ import annotations

import numpy as np
import pytest

from sparsec import kernels as sk


def _isas() -> list[str]:
    return sk.available_isas() if sk.kernels_available() else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test taking `isa` runs once per compiled path this CPU supports.
    if "isa" in metafunc.fixturenames:
        isas = _isas()
        metafunc.parametrize("isa", isas or [pytest.param(None, marks=pytest.mark.skip(
            reason="sparsec kernels not built"))])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def assert_matches(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """y equals x @ w computed in float64, relative to the output's magnitude (rel <= 1e-5)."""
    ref = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64)
    assert y.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(y - ref).max()) / scale
    assert err <= 1e-5, f"relative error {err:.3g}"


def randomize_batchnorms(net) -> None:  # noqa: ANN001
    """Non-trivial BatchNorm statistics (fresh ones are an identity ORT folds away)."""
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)


def pruned_onnx(net, x, pipeline: str) -> tuple[bytes, dict[str, np.ndarray]]:  # noqa: ANN001
    """`net` captured from torch at input `x` (static batch), run through `pipeline` (the
    compiler's own pruning, then legalize-dense) as ONNX bytes, and its feeds."""
    import onnxruntime as ort

    from sparsec.capture import from_torch
    from sparsec.ir.io import model_bytes
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    model = from_torch(net, (x,), dynamic_batch=False)
    PassManager(parse_pipeline(f"{pipeline},legalize-dense")).run(model, PassContext())
    data = model_bytes(model)
    return data, {ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()[0].name: x.numpy()}


def exported_and_pruned(net, x, path, exporter: str, pipeline: str) -> tuple[bytes, dict[str, np.ndarray]]:  # noqa: ANN001
    """`net` written to `path` by torch's `exporter` ("legacy" or "dynamo", opset 17, input
    "input"), read back as a user's file would be, run through `pipeline` then legalize-dense."""
    import warnings

    import torch

    from sparsec.capture import from_onnx
    from sparsec.ir.io import model_bytes
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["input"])
        else:
            torch.onnx.export(net, (x,), dynamo=True, opset_version=17, input_names=["input"], verbose=False).save(path)
    model = from_onnx(path)
    PassManager(parse_pipeline(f"{pipeline},legalize-dense")).run(model, PassContext())
    return model_bytes(model), {"input": x.numpy()}
