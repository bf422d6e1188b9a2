"""`--attention=auto`: per-head layouts from calibration profiles under a density budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsec.cli.main import main
from sparsec.dialect.attention import ALL_BLOCKS
from sparsec.passes.attention.auto_layout import (
    allowed_blocks,
    choose_layouts,
    uniform_layout,
    window_candidates,
)
from sparsec.passes.attention.head_profile import HeadProfile


def _profile(nk: int, block: int = 4) -> HeadProfile:
    """Two causal heads over nk blocks: head 0 reads only its own block, head 1 only block 0
    (an attention sink); one row of mass per query block row."""
    rows = np.full(nk, float(block))
    mass = np.zeros((2, nk, nk))
    for q in range(nk):
        mass[0, q, q] = block
        mass[1, q, 0] = block
    return HeadProfile("blk", block, mass, rows)


def test_window_candidates_grow_and_stay_below_all_blocks() -> None:
    assert window_candidates(1) == []
    c = window_candidates(40)
    assert c[:4] == [1, 2, 3, 4] and all(a < b for a, b in zip(c, c[1:], strict=False)) and c[-1] < 40


def test_auto_gives_each_head_the_blocks_it_reads() -> None:
    prof = _profile(8)
    layouts = choose_layouts({"blk": prof}, {"blk": True}, density=0.35)["blk"]
    near, sink = layouts
    assert near.local == 1 and near.captured == pytest.approx(1.0)
    assert sink.sinks >= 1 and sink.captured == pytest.approx(1.0)
    kept = sum(h.kept_blocks for h in layouts)
    assert kept <= 0.35 * sum(h.dense_blocks for h in layouts) + 1e-9
    # One window for both heads at that density cannot serve the sink head.
    w, s = uniform_layout({"blk": prof}, {"blk": True}, 0.35)
    uniform = prof.captured(allowed_blocks(w, s, True, 4, 8)[None])
    assert uniform[1] < 0.5 and min(h.captured for h in layouts) > uniform[1]


def test_density_one_keeps_everything_dense() -> None:
    layouts = choose_layouts({"blk": _profile(6)}, {"blk": True}, density=1.0)["blk"]
    assert [(h.local, h.sinks) for h in layouts] == [(ALL_BLOCKS, 0), (ALL_BLOCKS, 0)]


def _calib(path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, input_ids=rng.integers(0, 100, (n, 16)), attention_mask=np.ones((n, 16), np.int64))


def test_compile_auto_layout_records_per_head_choices(hf_export, tmp_path, capsys) -> None:
    calib = tmp_path / "calib.npz"
    _calib(calib)
    out = tmp_path / "out"
    rc = main(["compile", str(hf_export("gpt2", "legacy")), "-p", "sparse-attention{layout=auto density=0.5 block=4}",
               "--calib", str(calib), "--no-bench", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    stats = next(p for p in manifest["passes"] if p["pass"].startswith("sparse-attention"))
    auto = stats["stats"]["auto"]
    assert 0.0 < auto["density"] <= 0.5 and auto["unprofiled"] == {}
    for block in stats["stats"]["rewritten"]:
        assert len(block["captured_mass"]) == 4 and all(0.0 < c <= 1.0 + 1e-6 for c in block["captured_mass"])
    fid = stats["fidelity"]
    assert np.isfinite(fid["max_abs"]) and fid["worst_cosine"] > 0.5  # no NaN from rows left without keys
    ops = {(n.domain, n.op_type) for n in onnx.load(out / "model.onnx").graph.node}
    assert ("com.sparsec.kernels", "SparseAttention") in ops


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--attention=auto"], "needs calibration data"),
        (["--attention=local:64", "--density=0.5"], "--density needs --attention=auto"),
        (["--density=0.5"], "--density needs --attention=auto"),
        (["--attention=auto", "--density=1.5"], "--density=1.5"),
    ],
)
def test_bad_auto_flags_are_one_line(hf_export, tmp_path, capsys, args, needle) -> None:
    out = tmp_path / "never"
    rc = main(["compile", str(hf_export("gpt2", "legacy")), *args, "--no-bench", "-o", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sparsec: error:")]
    assert rc == 2 and len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    assert not out.exists()
