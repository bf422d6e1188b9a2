"""Loading: external-data weights, and clear errors for broken files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sparsec.errors import InputError
from sparsec.ir.io import load_model, to_proto
from sparsec.ir.printer import print_ir
from sparsec.numerics import evaluate, sample_inputs


def _save_external(mlp, path):
    proto = to_proto(mlp)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)


def test_external_data_loads_and_runs(tmp_path, mlp) -> None:
    feeds = sample_inputs(mlp, dims={"N": 3})
    expected = evaluate(mlp, feeds)
    _save_external(mlp, tmp_path / "m.onnx")
    assert (tmp_path / "weights.bin").stat().st_size > 0
    loaded = load_model(tmp_path / "m.onnx")
    np.testing.assert_allclose(evaluate(loaded, feeds)[0], expected[0], rtol=1e-6)
    assert "init %w1 = f32[32,16]" in print_ir(loaded)


def test_missing_or_truncated_external_data(tmp_path, mlp) -> None:
    _save_external(mlp, tmp_path / "m.onnx")
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="truncated"):
        load_model(tmp_path / "m.onnx")
    data.unlink()
    with pytest.raises(InputError, match="missing"):
        load_model(tmp_path / "m.onnx")


def test_printer_is_deterministic_and_elides_large_constants(mlp) -> None:
    text = print_ir(mlp)
    assert text == print_ir(mlp)
    assert "<sha1:" in text and "init %b1 = f32[32] <sha1:" in text
    assert len(text.splitlines()) < 20


def _constant_model(tensor: onnx.TensorProto, extra: int = 0) -> onnx.ModelProto:
    w = onnx.numpy_helper.from_array(np.ones((256, 256 + extra), np.float32), "w")
    nodes = [onnx.helper.make_node("Constant", [], ["c"], value=tensor),
             onnx.helper.make_node("MatMul", ["c", "w"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 256 + extra])],
                                   initializer=[w])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_the_checker_sees_the_graph_without_the_weight_bytes(tmp_path) -> None:
    from sparsec.ir.io import _without_weight_data

    proto = _constant_model(onnx.numpy_helper.from_array(np.ones((4, 256), np.float32), "c"))
    assert proto.ByteSize() > 256 * 256 * 4 and _without_weight_data(proto).ByteSize() < 8 * 1024
    proto.graph.node[1].input[0] = "undefined"  # used before (never) defined: the checker's finding
    onnx.save_model(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(InputError, match="not a valid ONNX model.*topologically sorted"):
        load_model(tmp_path / "bad.onnx")
    onnx.save_model(_constant_model(onnx.numpy_helper.from_array(np.ones((4, 256), np.float32), "c"), extra=1),
                    str(tmp_path / "short.onnx"))
    short = onnx.load(str(tmp_path / "short.onnx"))
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:-4]
    onnx.save_model(short, str(tmp_path / "short.onnx"))
    with pytest.raises(InputError, match="holds 263164 bytes of data"):
        load_model(tmp_path / "short.onnx")


def test_an_attribute_tensor_held_outside_the_file_is_checked_against_the_models_folder(tmp_path) -> None:
    c = np.arange(4 * 256, dtype=np.float32).reshape(4, 256)
    (tmp_path / "c.bin").write_bytes(c.tobytes())
    tensor = onnx.numpy_helper.from_array(c, "c")
    onnx.external_data_helper.set_external_data(tensor, "c.bin")
    tensor.ClearField("raw_data")
    onnx.save_model(_constant_model(tensor), str(tmp_path / "m.onnx"))
    loaded = load_model(tmp_path / "m.onnx")  # would fail if checked against the working folder
    assert [n.op_type for n in loaded.graph] == ["Constant", "MatMul"]


def test_the_input_hash_covers_external_data(tmp_path, mlp) -> None:
    from sparsec.ir.io import external_data_files, model_hash

    _save_external(mlp, tmp_path / "m.onnx")
    files = external_data_files(load_model(tmp_path / "m.onnx"))
    assert files == [tmp_path / "weights.bin"]
    before = model_hash(tmp_path / "m.onnx", files)
    data = bytearray(files[0].read_bytes())
    data[0] ^= 1  # one bit of one weight, the model file untouched
    files[0].write_bytes(bytes(data))
    assert model_hash(tmp_path / "m.onnx", files) != before
    assert model_hash(tmp_path / "m.onnx") == model_hash(tmp_path / "m.onnx", [])


def test_compile_records_the_hash_of_model_and_external_data(tmp_path, mlp) -> None:
    from sparsec.compiler import CompileOptions, compile_file
    from sparsec.ir.io import model_hash

    _save_external(mlp, tmp_path / "m.onnx")
    result = compile_file(tmp_path / "m.onnx", tmp_path / "out", CompileOptions(sparsity="none", bench=False, fidelity_samples=1))
    assert result.manifest["input"]["sha256"] == model_hash(tmp_path / "m.onnx", [tmp_path / "weights.bin"])
    assert result.manifest["input"]["sha256"] != model_hash(tmp_path / "m.onnx")
