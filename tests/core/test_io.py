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
