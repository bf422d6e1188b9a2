"""One test per bug the fuzzers found (the seeds that found them are in the commit log)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto

from sparsec import kernels as sk
from sparsec.calib.data import CalibrationData
from sparsec.calib.metrics import compare
from sparsec.errors import InputError, PipelineError
from sparsec.ir.io import load_model
from sparsec.numerics import sample_inputs
from sparsec.passes.analysis.cost_model import estimate_costs
from sparsec.pm.pipeline import parse_pipeline, pipeline_from_yaml
from sparsec.pm.pipeline_text import format_value

from . import gen_npz, gen_onnx
from .gen_models import mlp_proto, tiny_mlp
from .gen_packed import ort_model


# -- pipelines ------------------------------------------------------------------------------
def test_errors_quoting_user_text_stay_one_line() -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline("sparsify{criterion='a\nb'}")
    assert "\n" not in str(info.value) and "a\\nb" in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "NaN", "1_0", "٣"])
def test_numbers_must_be_finite_ascii(value: str) -> None:
    option = "damp" if not value[0].isdigit() or "e" in value else "min_params"
    with pytest.raises(PipelineError, match="expected a"):
        parse_pipeline(f"nm-sparsity{{{option}={value}}}")


def test_integers_beyond_int64_are_refused() -> None:
    with pytest.raises(PipelineError, match="out of range"):
        parse_pipeline("nm-sparsity{min_params=99999999999999999999999}")


def test_quotes_and_none_strings_round_trip() -> None:
    p = pipeline_from_yaml("- nm-sparsity: {include: [\"it's\", none, 'a b']}")
    assert p.passes[0].include == ("it's", "none", "a b")
    assert parse_pipeline(p.to_text(full=True)) == p
    assert format_value("none") == "'none'" and format_value("it's") == "'it''s'"


@pytest.mark.parametrize("text", [
    "- nm-sparsity: {include: " + "[" * 3000 + "]" * 3000 + "}",  # RecursionError before
    "- nm-sparsity: {include: [[a, b]]}",
    "- nm-sparsity: &a {include: *a}",
    "".join(f"- nm-sparsity: {{include: &{c} [" + ",".join([f"*{p}"] * 10 if p else ["x"] * 10) + "]}\n"
            for c, p in zip("abcdefgh", ["", *"abcdefg"], strict=True)),  # 10^8 items before
])
def test_yaml_nesting_is_refused_quickly(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(PipelineError, match="nests|nested list|a dict"):
        pipeline_from_yaml(text)
    assert time.perf_counter() - start < 10  # the alias bomb took minutes


# -- ONNX loader ----------------------------------------------------------------------------
def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def test_raw_data_longer_than_its_shape_is_refused(tmp_path: Path) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(mlp_proto())
    proto.graph.initializer[1].raw_data += bytes(4)
    with pytest.raises(InputError, match="tensor 'b1' holds 260 bytes of data"):
        load_model(_save(proto, tmp_path / "m.onnx"))


def _external(tmp_path: Path, location: str, length: int | None = None) -> Path:
    proto = onnx.ModelProto()
    proto.CopyFrom(mlp_proto())
    t = proto.graph.initializer[0]
    data = t.raw_data
    (tmp_path / "weights.bin").write_bytes(data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length or len(data)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    return _save(proto, folder / "m.onnx")


def test_external_data_resolves_against_the_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _external(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    monkeypatch.chdir(tmp_path.parent)  # the checker once resolved it against this folder
    model = load_model(path)
    assert estimate_costs(model).layers


@pytest.mark.parametrize("location", ["../weights.bin", str(Path("/etc/hostname"))])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    with pytest.raises(InputError):
        load_model(_external(tmp_path, location))


def test_external_length_must_match_the_tensor(tmp_path: Path) -> None:
    path = _external(tmp_path, "weights.bin", length=4)
    (path.parent / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    with pytest.raises(InputError, match="is 4 bytes long, its shape and type need 16384"):
        load_model(path)


@pytest.mark.parametrize("seed", [1170, 2978, 5084])
def test_fuzz_seeds_that_escaped_shape_inference_and_compare(seed: int) -> None:
    """Types/shapes that contradict ONNX inference (1170, 2978), an empty output (5084)."""
    assert not gen_onnx.onnx_case(seed).failed


def test_huge_static_input_is_refused_before_allocating() -> None:
    model = tiny_mlp()
    model.graph.inputs[0].shape = ir.Shape([2**31, 64])
    with pytest.raises(InputError, match="no sample input of that shape"):
        sample_inputs(model)


def test_empty_outputs_compare_equal() -> None:
    empty = np.zeros((0, 16), np.float32)
    assert compare([empty], [empty]).worst_cosine == 1.0


# -- calibration files ----------------------------------------------------------------------
def test_npz_header_declaring_terabytes_is_refused_without_allocating(tmp_path: Path) -> None:
    import zipfile

    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (17592186044416,), }").ljust(118) + "\n"
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64))
    with pytest.raises(InputError, match="declares shape"):
        CalibrationData.load(str(tmp_path / "c.npz"))


def test_npz_scalar_member_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.float32(1))
    with pytest.raises(InputError, match="not an array with samples"):
        CalibrationData.load(str(tmp_path / "c.npz"))


def test_npz_with_a_damaged_compression_method_is_refused() -> None:
    """Seed 2436 of the npz target: a bit flip in the zip's compression-method field."""
    assert not gen_npz.npz_case(2436).failed


def test_npz_with_nan_is_refused() -> None:
    x = np.ones((4, 64), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(InputError, match="holds NaN"):
        CalibrationData({"x": x}).check_against(tiny_mlp())


# -- packed formats -------------------------------------------------------------------------
needs_kernels = pytest.mark.skipif(not sk.kernels_available(), reason="sparsec kernels not built")


def _block_arrays(bk: int = 4, k: int = 16) -> dict[str, np.ndarray]:
    w = np.zeros((k, 20), np.float32)
    w[:bk] = 1.0
    w[k - bk:] = 2.0
    p = sk.pack_block(w, bk)
    return {"tile_ptr": np.array(p.tile_ptr), "kidx": np.array(p.kidx), "values": np.array(p.values)}


def _session_error(kind: str, attrs: dict, arrays: dict[str, np.ndarray]) -> str:
    from sparsec.backends.ort.sparse_ops import make_session

    with pytest.raises(sk.PackedFormatError) as info:
        make_session(ort_model(kind, attrs, arrays))
    assert "node 'fuzz_node'" in str(info.value)
    return str(info.value)


@needs_kernels
def test_overlapping_blocks_are_refused_in_python_and_c() -> None:
    arrays = _block_arrays()
    arrays["kidx"][1] = arrays["kidx"][0] + 2  # the second block of tile 0 overlaps the first
    with pytest.raises(sk.PackedFormatError, match="overlap"):
        sk.PackedBlock.from_arrays(4, 16, 20, **arrays)
    assert "overlap" in _session_error("block", {"bk": 4, "K": 16, "N": 20}, arrays)


@needs_kernels
@pytest.mark.parametrize("bk,k", [(7, 14), (4, 18)])
def test_block_height_must_be_supported_and_divide_k(bk: int, k: int) -> None:
    arrays = _block_arrays(1, 14)
    arrays["values"] = np.zeros(arrays["kidx"].size * bk * 16, np.float32)
    arrays["kidx"][:] = 0
    arrays["kidx"][1:] = np.arange(1, arrays["kidx"].size) * bk
    assert "unsupported block height" in _session_error("block", {"bk": bk, "K": k, "N": 20}, arrays)


@needs_kernels
def test_wrong_element_type_of_packed_input_is_a_packed_format_error() -> None:
    w = sk.prune_nm(np.random.default_rng(0).standard_normal((16, 20)), 2, 4)
    p = sk.pack_nm(w, 2, 4)
    arrays = {"values": np.asarray(p.values), "meta": np.asarray(p.meta).astype(np.uint8)}
    assert "input fuzz_node.meta has type" in _session_error("nm", {"n": 2, "m": 4, "K": 16, "N": 20}, arrays)


def test_k_beyond_int32_is_refused_as_in_c() -> None:
    with pytest.raises(sk.PackedFormatError, match="at most"):
        sk.PackedBlock.from_arrays(1, 2**31, 16, np.array([0, 0], np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
