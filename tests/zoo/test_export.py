from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sparsec.models_zoo import export_onnx, get

from .conftest import SMALL_MODELS


def _run_ort(
    session: ort.InferenceSession, names: tuple[str, ...], inputs: tuple[torch.Tensor, ...]
) -> np.ndarray:
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_export_checks_keeps_names_and_matches_torch(
    name: str, exported: Callable[[str], Path]
) -> None:
    entry = get(name)
    path = exported(name)
    assert not list(path.parent.glob("*.data")), "small models keep their weights in the file"
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == list(entry.input_names)
    assert [o.name for o in proto.graph.output] == list(entry.output_names)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    model = entry.build()
    state = model.state_dict()
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # Every parameter is an initializer named by its state_dict key, with unchanged values.
    for key, param in model.named_parameters():
        assert key in inits, key
        np.testing.assert_array_equal(inits[key], param.detach().numpy(), err_msg=key)
    for key, value in inits.items():
        if key in state:
            np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch: a batch other than the traced one
        inputs = entry.example_inputs(batch)
        with torch.no_grad():
            expected = model(*inputs).numpy()
        actual = _run_ort(session, entry.input_names, inputs)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt"])  # the richest graph: mask, Where, shape constants
def test_export_is_byte_deterministic(
    name: str, tmp_path: Path, exported: Callable[[str], Path]
) -> None:
    a = exported(name)
    b = export_onnx(name, tmp_path / "again.onnx")
    assert a.read_bytes() == b.read_bytes()
    # No absolute source paths (exporter stack traces) baked into the file.
    assert str(Path(__file__).parents[2]).encode() not in a.read_bytes()


@pytest.mark.slow
def test_static_batch_export(tmp_path: Path) -> None:
    path = export_onnx("mlp", tmp_path / "mlp.onnx", batch=4, dynamic=False)
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 4


@pytest.mark.slow
def test_resnet_keeps_batchnorm_unfused(exported: Callable[[str], Path]) -> None:
    # The stock exporter optimizer folds BatchNorm into Conv under the Conv's name; we must not.
    proto = onnx.load(exported("resnet"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv") == 22
