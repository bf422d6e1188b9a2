"""Loading leaves large inline weights in the .onnx file (read on demand like external data):
the same values, dtypes and load errors as a whole parse, on real exports too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sparsec.errors import InputError
from sparsec.ir.file_tensor import FileTensor
from sparsec.ir.io import load_model
from sparsec.ir.weights_by_reference import MIN_BYTES, parse_by_reference


def _model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    names = list(weights)
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    outputs = [
        helper.make_tensor_value_info(f"{n}_out", helper.np_dtype_to_tensor_dtype(w.dtype), list(w.shape))
        for n, w in weights.items()
    ]
    graph = helper.make_graph(nodes, "g", [], outputs, [numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _whole(path) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_large_inline_weights_are_read_from_the_file_with_their_values(tmp_path) -> None:
    rng = np.random.default_rng(0)
    weights = {
        "big": rng.standard_normal((64, 48)).astype(np.float32),
        "half": rng.standard_normal((40, 80)).astype(np.float16),
        "ids": rng.integers(-5, 5, (1000,)).astype(np.int64),
        "small": rng.standard_normal((4, 4)).astype(np.float32),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    path = tmp_path / "m.onnx"
    onnx.save(_model(weights), str(path))
    assert not any(isinstance(v.const_value, FileTensor) for v in load_model(path).graph.initializers.values())
    model = load_model(path, by_reference=True)  # the compile's load
    whole = _whole(path)
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        assert isinstance(tensor, FileTensor) == (weights[name].nbytes >= MIN_BYTES), name
        got = tensor.numpy()
        assert got.dtype == whole[name].dtype and got.shape == whole[name].shape
        assert got.tobytes() == whole[name].tobytes()
    # The stripped message still holds every other field; the bytes are where it says.
    data = path.read_bytes()
    proto = parse_by_reference(memoryview(data), path.name)
    assert proto is not None
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            offset, length = int(info["offset"]), int(info["length"])
            assert info["location"] == "m.onnx" and not tensor.HasField("raw_data")
            assert data[offset : offset + length] == weights[tensor.name].tobytes()


def test_a_real_torch_export_loads_the_same_weights(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(net, (torch.randn(2, 32),), str(path), dynamo=False, opset_version=17)
    model = load_model(path, by_reference=True)
    whole = _whole(path)
    assert any(isinstance(v.const_value, FileTensor) for v in model.graph.initializers.values())
    for name, value in model.graph.initializers.items():
        assert value.const_value.numpy().tobytes() == whole[name].tobytes()


def test_a_mis_sized_weight_is_refused_as_before(tmp_path) -> None:
    tensor = numpy_helper.from_array(np.zeros((64, 64), np.float32), "big")
    tensor.raw_data = tensor.raw_data + b"\0" * 8  # longer than its shape needs
    proto = _model({"big": np.zeros((64, 64), np.float32)})
    proto.graph.initializer[0].CopyFrom(tensor)
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(InputError, match="holds 16392 bytes of data, its shape"):
        load_model(path, by_reference=True)


def test_other_layouts_are_parsed_whole(tmp_path) -> None:
    """No large weight, a tensor with external data of its own, or bytes that are no
    protobuf: nothing is referenced (None), and the whole parse decides."""
    small = _model({"s": np.ones((2, 2), np.float32)}).SerializeToString()
    assert parse_by_reference(memoryview(small), "m.onnx") is None
    proto = _model({"big": np.ones((64, 64), np.float32)})
    onnx.external_data_helper.convert_model_to_external_data(proto, location="w.bin", size_threshold=0)
    assert parse_by_reference(memoryview(proto.SerializeToString()), "m.onnx") is None
    assert parse_by_reference(memoryview(b"\x3a\xff\xff\xff\x0f" + b"x" * 10), "m.onnx") is None  # a graph longer than the file
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x3a\xff\xff\xff\x0f" + b"x" * 10)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        load_model(path, by_reference=True)


def test_input_weights_are_mapped_views_only_within_mapped_reads(tmp_path) -> None:
    """In a compile that fits its budget, the input's weights are read-only views of a mapping
    of the file (no copy per read); otherwise, and for spilled weights always, each read is a
    fresh copy."""
    from sparsec.ir.file_tensor import SpillStore, mapped_reads

    weights = {"big": np.arange(600 * 600, dtype=np.float32).reshape(600, 600)}  # above the small-tensor cache
    path = tmp_path / "m.onnx"
    onnx.save(_model(weights), str(path))
    tensor = load_model(path, by_reference=True).graph.initializers["big"].const_value
    assert isinstance(tensor, FileTensor) and tensor.mappable
    copied = tensor.numpy()
    assert copied.flags.writeable
    with mapped_reads(True):
        view = tensor.numpy()
        assert not view.flags.writeable and not view.flags.owndata
        np.testing.assert_array_equal(view, weights["big"])
        with mapped_reads(False):  # a nested streaming compile reads copies
            assert tensor.numpy().flags.writeable
        store = SpillStore(tmp_path, threshold=0)
        try:
            spilled = store.put(weights["big"], name="s")
            assert isinstance(spilled, FileTensor) and not spilled.mappable
            assert spilled.numpy().flags.writeable
        finally:
            store.close()
    assert tensor.numpy().flags.writeable
