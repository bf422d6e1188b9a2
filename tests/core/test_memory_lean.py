"""Models bigger than memory: weights read on demand, stage-by-stage runs equal whole-model
runs, artifacts with external data, the --max-memory budget, and no >2 GB proto ever built."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sparsec.calib.staged import StagedModel, run_staged
from sparsec.compiler import CompileOptions, compile_file
from sparsec.errors import InputError
from sparsec.ir.file_tensor import FileTensor, SpillStore, adopt_external
from sparsec.ir.io import load_model, to_proto, write_model
from sparsec.ir.session import proto_with_external_weights, session_from_ir
from sparsec.memory import Budget, parse_size
from sparsec.numerics import sample_inputs
from sparsec.runtime import InferenceSession
from sparsec.testing import make_model, seeded

STACK = """
<ir_version: 10, opset_import: ["" : 18]>
stack (float[2,256] x) => (float[2,256] y) {
  a = MatMul(x, w1)
  b = Relu(a)
  c = MatMul(b, w2)
  d = Add(c, x)
  e = Tanh(d)
  y = MatMul(e, w3)
}
"""


@pytest.fixture
def external_model(tmp_path):
    """A three-layer model (256x256 weights: big enough for the sparse kernels) saved with
    its weights in an external-data file."""
    model = make_model(STACK, w1=seeded((256, 256), 1), w2=seeded((256, 256), 2), w3=seeded((256, 256), 3))
    path = tmp_path / "src" / "stack.onnx"
    path.parent.mkdir()
    written = write_model(model, path, external=True)
    assert [p.name for p in written] == ["stack.onnx", "stack.onnx.data"]
    return path


def _outputs(model, feeds):
    return session_from_ir(model, lean=True).run(None, feeds)  # no pre-packing, as the stages


def test_external_weights_load_as_file_tensors_read_fresh(external_model, monkeypatch):
    monkeypatch.setattr("sparsec.ir.file_tensor.CACHE_BYTES", 0)
    model = load_model(external_model)
    tensor = model.graph.initializers["w1"].const_value
    assert isinstance(tensor, FileTensor)
    a, b = tensor.numpy(), tensor.numpy()
    assert a is not b and np.array_equal(a, b)  # never cached or mapped: each read is its own array
    assert tensor.raw is None
    np.testing.assert_array_equal(a, seeded((256, 256), 1))


def test_staged_run_equals_whole_model(external_model):
    model = load_model(external_model)
    batches = [sample_inputs(model, seed=s) for s in range(3)]
    whole = np.concatenate([_outputs(model, b)[0] for b in batches])
    for stage_bytes, count in ((1, 5), (2 * 256 * 256 * 4, 2), (10 << 20, 1)):  # a weight per stage ... one stage
        staged = StagedModel(model, stage_bytes)
        assert len(staged.stages) == count
        assert all(s.weight_bytes <= max(stage_bytes, 256 * 256 * 4) for s in staged.stages)
        # Equal up to float32 rounding: ORT fuses ops (MatMul+Add) within a session, not across a cut.
        np.testing.assert_allclose(run_staged(model, batches, stage_bytes)[0], whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())


def test_streaming_compile_equals_in_memory(external_model, tmp_path):
    whole = compile_file(external_model, tmp_path / "whole", CompileOptions(bench=False, tune=False))
    streamed = compile_file(external_model, tmp_path / "streamed", CompileOptions(max_memory=100_000, tune=False))
    assert whole.manifest["memory"]["mode"] == "in-memory"
    assert streamed.manifest["memory"]["mode"] == "streaming"
    assert streamed.manifest["memory"]["peak_rss_bytes"] > 0
    assert "memory budget" in streamed.manifest["latency"]["reason"]  # bench asked for, skipped with a reason
    assert streamed.manifest["fidelity"]["execution"].startswith("stage by stage")
    assert streamed.manifest["runtime_ops"], "the compiled model should use the sparse kernels"
    for key in ("mean_cosine", "worst_cosine", "max_abs"):
        assert streamed.manifest["fidelity"][key] == pytest.approx(whole.manifest["fidelity"][key], rel=1e-5, abs=1e-6)
    # The streamed artifact keeps its weights in an external-data file and runs the same.
    assert (tmp_path / "streamed" / "model.onnx.data").is_file()
    assert "model.onnx.data" in streamed.manifest["files"]
    assert (tmp_path / "streamed" / "model.onnx").stat().st_size < 64 << 10
    feeds = sample_inputs(load_model(external_model), seed=7)
    a = InferenceSession(tmp_path / "whole").run(None, feeds)[0]
    b = InferenceSession(tmp_path / "streamed").run(None, feeds)[0]
    np.testing.assert_array_equal(a, b)


def test_no_proto_holds_the_weights_of_a_huge_model(tmp_path):
    """A model with 3 GB of (sparse-file) weights: its proto, session proto and stage protos
    stay tiny, so protobuf's 2 GB limit is never met; nothing reads the weights."""
    data = tmp_path / "huge.onnx.data"
    with open(data, "wb") as f:
        f.truncate(3 << 30)  # a sparse file: no disk used
    model = make_model(STACK, w1=seeded((256, 256), 1), w2=seeded((256, 256), 2), w3=seeded((256, 256), 3))
    big = 3 << 30
    for i, name in enumerate(("w1", "w2", "w3")):
        value = model.graph.initializers[name]
        t = value.const_value
        value.const_value = FileTensor(data.name, offset=i * (1 << 30), length=t.nbytes, dtype=t.dtype,
                                       shape=t.shape, name=name, base_dir=str(tmp_path))
    assert len(to_proto(model).SerializeToString()) < 16 << 10
    proto, arrays = proto_with_external_weights(model, read=False)
    assert arrays == {} and proto.ByteSize() < 16 << 10
    assert Budget(1 << 30).streams(big)
    staged = StagedModel(model, 1)
    for stage in staged.stages:
        p, _, _ = staged._stage_proto(stage, [("x", np.zeros((2, 256), np.float32))] + [
            (n, np.zeros((2, 256), np.float32)) for n in "abcde"])
        assert p.ByteSize() < 16 << 10


def test_spill_store_writes_once_and_reads_back(tmp_path):
    store = SpillStore(tmp_path, threshold=1024)
    try:
        small = store.put(np.ones(10, np.float32), "s")
        big = store.put(np.arange(4096, dtype=np.float32).reshape(64, 64), "b")
        assert not isinstance(small, FileTensor) and isinstance(big, FileTensor)
        np.testing.assert_array_equal(big.numpy(), np.arange(4096, dtype=np.float32).reshape(64, 64))
        assert store.bytes == 4096 * 4
    finally:
        store.close()
    assert not store.folder.exists()


def test_adopt_external_replaces_mapped_tensors(external_model):
    import onnx_ir as ir

    model = ir.load(str(external_model))
    assert not isinstance(model.graph.initializers["w1"].const_value, FileTensor)
    assert adopt_external(model) == 3
    assert isinstance(model.graph.initializers["w1"].const_value, FileTensor)


@pytest.mark.parametrize(("text", "expected"), [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GB", int(1.5 * (1 << 30))),
                                                ("2gib", 2 << 30), ("1073741824", 1 << 30)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "8X", "-1G", "", "1K"])
def test_parse_size_refuses(text):
    with pytest.raises(InputError, match="--max-memory"):
        parse_size(text)


def test_cli_bad_max_memory_is_one_line(external_model, tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "sparsec.cli", "compile", str(external_model), "-o", str(out), "--max-memory=lots"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--max-memory: 'lots' is not a size" in proc.stderr
    assert not out.exists()


def test_streaming_sparsegpt_equals_in_memory(external_model, tmp_path, monkeypatch):
    """Sequential SparseGPT on calibration data: the same pruned model whether its rewritten
    weights stay in memory or are spilled and its fidelity is measured stage by stage."""
    monkeypatch.setattr("sparsec.compiler.SPILL_TENSOR_BYTES", 1024)  # spill these 256 KB weights
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((2, 256)).astype(np.float32)} for _ in range(4)]
    # tune=False: the per-machine tuner may judge these small layers slower sparse under load
    # and leave them dense (nothing pruned, nothing spilled).
    options = {"criterion": "sparsegpt", "calibration": calib, "bench": False, "held_out": 2, "tune": False}
    whole = compile_file(external_model, tmp_path / "whole", CompileOptions(**options))
    streamed = compile_file(external_model, tmp_path / "streamed", CompileOptions(**options, max_memory=100_000))
    assert streamed.manifest["memory"]["mode"] == "streaming" and streamed.manifest["memory"]["spilled_bytes"] > 0
    assert whole.manifest["fidelity"]["inputs"] == "calibration"
    for key in ("mean_cosine", "worst_cosine"):
        assert streamed.manifest["fidelity"][key] == pytest.approx(whole.manifest["fidelity"][key], rel=1e-6)
    feeds = {"x": rng.standard_normal((2, 256)).astype(np.float32)}
    a = InferenceSession(tmp_path / "whole").run(None, feeds)[0]
    b = InferenceSession(tmp_path / "streamed").run(None, feeds)[0]
    np.testing.assert_array_equal(a, b)


def test_a_dropped_spilled_weight_frees_its_disk_blocks(tmp_path):
    """A pass that replaces a spilled weight (pruned, then packed) leaves no dead bytes on disk;
    the neighbours in the same spill file keep their data."""
    import gc
    import os

    store = SpillStore(tmp_path, threshold=1)
    try:
        arrays = [seeded((512, 1024), i) for i in range(3)]  # 2 MB each
        tensors = [store.put(a, f"w{i}") for i, a in enumerate(arrays)]
        full = os.stat(store.path).st_blocks
        del tensors[1]
        gc.collect()
        freed = full - os.stat(store.path).st_blocks
        if freed == 0:
            pytest.skip("this filesystem does not punch holes (fallocate PUNCH_HOLE)")
        assert freed * 512 >= 512 * 1024 * 4 - 8192  # the dropped tensor's blocks, minus partial ones
        np.testing.assert_array_equal(tensors[0].numpy(), arrays[0])
        np.testing.assert_array_equal(tensors[1].numpy(), arrays[2])
    finally:
        store.close()


def test_the_spill_threshold_follows_the_budget(external_model, tmp_path, monkeypatch):
    """Rewritten weights spill only where the model holds more than a sixteenth of the budget
    (and more than SPILL_MODEL_BYTES): the same in-memory compile spills under 8 MB, not by default."""
    monkeypatch.setattr("sparsec.compiler.SPILL_MODEL_BYTES", 1024)
    monkeypatch.setattr("sparsec.compiler.SPILL_TENSOR_BYTES", 1024)
    roomy = compile_file(external_model, tmp_path / "a", CompileOptions(bench=False, tune=False))
    tight = compile_file(external_model, tmp_path / "b", CompileOptions(bench=False, tune=False, max_memory=8 << 20))
    assert roomy.manifest["memory"]["mode"] == tight.manifest["memory"]["mode"] == "in-memory"
    assert roomy.manifest["memory"]["spilled_bytes"] == 0 < tight.manifest["memory"]["spilled_bytes"]


def test_small_pages_switches_numpys_huge_page_hint_off_within_the_compile(monkeypatch) -> None:
    """numpy's transparent-huge-page request is off inside `small_pages` (and a compile) and
    back to what it was after, also when the block raises."""
    from numpy._core.multiarray import _set_madvise_hugepage

    import sparsec.compiler as compiler
    from sparsec.memory import small_pages
    from sparsec.testing import mlp_model

    previous = _set_madvise_hugepage(True)
    try:
        with small_pages():
            assert _set_madvise_hugepage(False) is False  # was off inside
        assert _set_madvise_hugepage(True) is True  # restored
        with pytest.raises(RuntimeError), small_pages():
            raise RuntimeError("boom")
        assert _set_madvise_hugepage(True) is True

        seen = []
        real = compiler._compile

        def spy(*args, **kwargs):
            seen.append(_set_madvise_hugepage(False))
            return real(*args, **kwargs)

        monkeypatch.setattr(compiler, "_compile", spy)
        compiler.compile_model(mlp_model(1, (64, 64), name="pages"), compiler.CompileOptions(bench=False, tune=False))
        assert seen == [False] and _set_madvise_hugepage(True) is True
    finally:
        _set_madvise_hugepage(previous)
