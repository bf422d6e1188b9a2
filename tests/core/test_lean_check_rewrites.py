"""Compile-time rewrites of the lean checks compute what the code they replaced computed:
N:M violation counts without moving the group axis, one staged dense run shared by the
pass manager and the fidelity check."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.dense_share import SharedDenseRun
from sparsec.calib.staged import run_staged
from sparsec.ir.file_tensor import SpillStore, raw_bytes
from sparsec.nm_pattern import nm_mask, nm_violations
from sparsec.numerics import evaluate, sample_inputs
from sparsec.testing import make_model, seeded


def _former_violations(w: np.ndarray, n: int, m: int, axis: int) -> int:
    moved = np.moveaxis(np.asarray(w), axis, -1)
    g = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return int(np.count_nonzero(np.count_nonzero(g, axis=-1) > n))


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 8), (8, 16), (31, 64)])
@pytest.mark.parametrize("shape,axis", [((64, 24), 0), ((24, 64), 1), ((8, 64, 3, 3), 1), ((2, 5, 64), -1), ((64,), 0)])
def test_nm_violations_equals_the_former_count(n: int, m: int, shape: tuple[int, ...], axis: int) -> None:
    rng = np.random.default_rng(n * 7 + m)
    for density in (0.1, 0.5, 0.9):
        w = np.where(rng.random(shape) < density, rng.standard_normal(shape), 0.0).astype(np.float32)
        w[rng.random(shape) < 0.05] = np.nan  # NaN is a nonzero
        for a in (w, np.asfortranarray(w)):
            assert nm_violations(a, n, m, axis) == _former_violations(a, n, m, axis)


def test_nm_violations_rejects_an_axis_not_a_multiple_of_m() -> None:
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nm_violations(np.ones((6, 8)), 2, 4, 0)


MLP = """
<ir_version: 10, opset_import: ["" : 18]>
mlp (float[2,64] x) => (float[2,32] y, float[2,64] h) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _mlp() -> ir.Model:
    return make_model(MLP, w1=seeded((64, 64), 1), b1=seeded((64,), 2), w2=seeded((64, 32), 3))


def test_shared_dense_run_gives_each_check_the_outputs_of_its_own_run() -> None:
    model = _mlp()
    stage_bytes = 64 * 64 * 4  # one Gemm weight per stage: the run crosses stage boundaries
    feeds = sample_inputs(model, seed=0)
    samples = [sample_inputs(model, seed=1 + i) for i in range(3)]
    shared = SharedDenseRun(model, stage_bytes, 2, samples)
    first = shared(feeds)
    alone = run_staged(model, [feeds], stage_bytes, 2)
    for got, want in zip(first, alone, strict=True):
        assert np.asarray(got).tobytes() == want.tobytes()
    np.testing.assert_allclose(first[0], evaluate(model, feeds)[0], rtol=1e-5, atol=1e-6)
    want_fid = run_staged(model, samples, stage_bytes, 2)
    got_fid = shared.fidelity([dict(s) for s in samples])
    assert len(got_fid) == 2
    for got, want in zip(got_fid, want_fid, strict=True):
        assert got.shape == want.shape and got.tobytes() == want.tobytes()


def test_shared_dense_run_recomputes_for_other_samples_or_a_second_call() -> None:
    model = _mlp()
    samples = [sample_inputs(model, seed=1)]
    shared = SharedDenseRun(model, 1 << 20, 2, samples)
    shared(sample_inputs(model, seed=0))
    other = [sample_inputs(model, seed=5)]
    for got, want in zip(shared.fidelity(other), run_staged(model, other, 1 << 20, 2), strict=True):
        assert got.tobytes() == want.tobytes()
    # The kept outputs were handed out (or dropped) once; a second call runs the model again.
    again = shared.fidelity(samples)
    for got, want in zip(again, run_staged(model, samples, 1 << 20, 2), strict=True):
        assert got.tobytes() == want.tobytes()


def test_shared_dense_run_before_the_pass_manager_ran_runs_the_fidelity_samples_itself() -> None:
    model = _mlp()
    samples = [sample_inputs(model, seed=1), sample_inputs(model, seed=2)]
    shared = SharedDenseRun(model, 1 << 20, 2, samples)
    for got, want in zip(shared.fidelity(samples), run_staged(model, samples, 1 << 20, 2), strict=True):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(12, dtype=np.float64).reshape(4, 3).T,  # not contiguous: C order, as tobytes
        np.array(3.5, dtype=np.float16),
        np.arange(10, dtype=np.int64)[::2],
        np.array([True, False, True]),
        np.zeros((0, 3), dtype=np.float32),
        (np.arange(4) + 1j).astype(np.complex64),
    ],
)
def test_raw_bytes_equals_tobytes(array: np.ndarray) -> None:
    assert bytes(raw_bytes(array)) == array.tobytes(order="C")


def test_spilled_and_written_weights_hold_their_bytes(tmp_path) -> None:
    store = SpillStore(tmp_path, threshold=0)
    try:
        w = np.arange(64, dtype=np.float32).reshape(8, 8).T  # written in C order
        assert store.put(w, name="w").numpy().tobytes() == w.tobytes(order="C")
    finally:
        store.close()


STACK = """
<ir_version: 10, opset_import: ["" : 18]>
stack (float[2,256] x) => (float[2,256] y) {
  a = MatMul(x, w1)
  b = Relu(a)
  c = MatMul(b, w2)
  d = Add(c, x)
  y = MatMul(d, w3)
}
"""


def test_lean_compile_with_the_shared_dense_run_equals_one_without(tmp_path, monkeypatch) -> None:
    """A lean compile (checks stage by stage) shares the dense run between the pass manager
    and the fidelity check: every number and file is the one two separate runs gave."""
    from sparsec import compiler
    from sparsec.ir.io import write_model

    model = make_model(STACK, w1=seeded((256, 256), 1), w2=seeded((256, 256), 2), w3=seeded((256, 256), 3))
    path = tmp_path / "src" / "stack.onnx"
    path.parent.mkdir()
    write_model(model, path, external=True)
    monkeypatch.setattr("sparsec.memory.LEAN_STAGE_BYTES", 256 * 256 * 4)  # lean: a weight per stage
    runs = []
    real = compiler._shared_dense_run
    monkeypatch.setattr(compiler, "_shared_dense_run", lambda *a: runs.append(real(*a)) or runs[-1])
    shared = compiler.compile_file(path, tmp_path / "shared", compiler.CompileOptions(bench=False, tune=False))
    assert isinstance(runs[-1], SharedDenseRun) and runs[-1]._fidelity_parts is None  # made, and used up
    monkeypatch.setattr(compiler, "_shared_dense_run", lambda *a: None)
    separate = compiler.compile_file(path, tmp_path / "separate", compiler.CompileOptions(bench=False, tune=False))
    assert shared.manifest["fidelity"]["execution"].startswith("stage by stage")

    assert _numbers(shared.manifest) == _numbers(separate.manifest)
    assert shared.manifest["passes"][0]["fidelity"] is not None
    for name in ("model.onnx", "model.onnx.data"):
        a, b = tmp_path / "shared" / name, tmp_path / "separate" / name
        assert a.exists() == b.exists() and (not a.exists() or a.read_bytes() == b.read_bytes())


def _argsort_mask(scores: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    g = np.moveaxis(scores, axis, -1)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(np.moveaxis(scores, axis, -1).shape), -1, axis)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 8), (2, 8)])
@pytest.mark.parametrize("shape,axis", [((24, 32), 1), ((32, 24), 0), ((3, 16, 8), 1), ((4, 6, 16), -1)])
def test_nm_mask_of_a_transposed_array_matches_stable_argsort(n: int, m: int, shape: tuple[int, ...], axis: int) -> None:
    """Scores in Fortran order (a MatMul weight seen as [N, K]) are ranked in memory order;
    the mask is the stable argsort's, in that memory order too (masking the weight with it
    then needs no transposed copy)."""
    rng = np.random.default_rng(n + m)
    for scores in (np.abs(rng.standard_normal(shape)), np.abs(np.round(rng.standard_normal(shape))), np.zeros(shape)):
        f = np.asfortranarray(scores.astype(np.float32))
        assert f.flags.f_contiguous and not f.flags.c_contiguous
        got = nm_mask(f, n, m, axis)
        assert got.flags.f_contiguous and got.dtype == bool
        np.testing.assert_array_equal(got, _argsort_mask(f, n, m, axis))


def test_shared_compiled_run_keeps_the_fidelity_outputs_of_the_last_lowering_check() -> None:
    from sparsec.calib.compiled_share import SharedCompiledRun

    model = _mlp()
    feeds = sample_inputs(model, seed=0)
    samples = [sample_inputs(model, seed=1 + i) for i in range(3)]
    shared = SharedCompiledRun(samples, first_index=2)
    want = [np.concatenate(x, axis=0) for x in zip(*[evaluate(model, s) for s in samples], strict=True)]

    assert shared.fidelity([False] * 4, samples) is None  # no check ran yet
    shared(model, feeds, 1)  # before the lowering: only the sample input
    assert shared.fidelity([False] * 4, samples) is None
    first = shared(model, feeds, 2)
    for got, alone in zip(first, evaluate(model, feeds), strict=True):
        assert got.tobytes() == alone.tobytes()
    kept = shared.fidelity([True, True, True, False], [dict(s) for s in samples])
    assert kept is not None and len(kept) == 2
    for got, w in zip(kept, want, strict=True):
        assert got.shape == w.shape and got.tobytes() == w.tobytes()
    assert shared.fidelity([False] * 4, samples) is None  # handed out once

    shared(model, feeds, 2)
    assert shared.fidelity([False, False, True, True], samples) is None  # pass 3 changed the model after
    shared(model, feeds, 3)
    assert shared.fidelity([False] * 4, samples[:2]) is None  # other inputs


def test_shared_compiled_run_does_not_keep_the_reference_run_of_dialect_ops() -> None:
    """A check runs `com.sparsec` ops through their reference lowering, the fidelity run runs
    the model as it is: such a model's check outputs are not handed to the fidelity run."""
    from sparsec.calib.compiled_share import SharedCompiledRun
    from sparsec.pm import PassContext, PassManager, parse_pipeline

    model = _mlp()
    PassManager(parse_pipeline("nm-sparsity{only_faster=false}")).run(model, PassContext(tune=False))
    assert any(node.op_type == "NMSparse" for node in model.graph)
    samples = [sample_inputs(model, seed=1)]
    shared = SharedCompiledRun(samples, first_index=0)
    shared(model, sample_inputs(model, seed=0), 0)
    assert shared.fidelity([True], samples) is None


def test_compile_shares_its_last_check_with_the_fidelity_run(tmp_path, monkeypatch) -> None:
    """The compiled model's fidelity outputs come from the last lowering check's run: the
    manifest and the files equal those of a compile that runs the compiled model again."""
    from sparsec import compiler
    from sparsec.calib.compiled_share import SharedCompiledRun

    model = make_model(STACK, w1=seeded((256, 256), 1), w2=seeded((256, 256), 2), w3=seeded((256, 256), 3))
    runs: list[SharedCompiledRun] = []
    kept: list[bool] = []
    real, real_fidelity = compiler._shared_compiled_run, SharedCompiledRun.fidelity
    monkeypatch.setattr(compiler, "_shared_compiled_run", lambda *a: runs.append(real(*a)) or runs[-1])
    monkeypatch.setattr(SharedCompiledRun, "fidelity", lambda self, *a: kept.append((r := real_fidelity(self, *a)) is not None) or r)
    options = compiler.CompileOptions(bench=False, tune=False, prune_all=True)
    shared = compiler.compile_model(model.clone(), options)
    assert runs and kept == [True], "the fidelity run took the last check's outputs"
    monkeypatch.setattr(compiler, "_shared_compiled_run", lambda *a: None)
    separate = compiler.compile_model(model, options)

    assert _numbers(shared.manifest) == _numbers(separate.manifest)
    assert shared.files["model.onnx"] == separate.files["model.onnx"]


def _numbers(manifest: dict) -> str:
    """The manifest as text without its timings and memory peak (which differ run to run)."""
    drop = {"seconds", "peak_rss_bytes"}
    strip = lambda d: {k: strip(v) for k, v in d.items() if k not in drop} if isinstance(d, dict) else (  # noqa: E731
        [strip(x) for x in d] if isinstance(d, list) else d)
    return json.dumps(strip(manifest), sort_keys=True)
