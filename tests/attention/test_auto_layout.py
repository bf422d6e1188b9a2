"""`--attention=auto`: per-head layouts from calibration profiles under a density budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sparsec.cli.main import main
from sparsec.dialect.attention import ALL_BLOCKS
from sparsec.passes.attention.auto_layout import choose_layouts, uniform_window
from sparsec.passes.attention.head_profile import (
    HeadProfile,
    _Accumulator,
    candidates,
    window_candidates,
)
from sparsec.passes.attention.match import AttentionMatch


def _match(heads: int, seq: int) -> AttentionMatch:
    return AttentionMatch("blk", None, None, None, None, None, None, 1.0, q_shape=(1, heads, seq, 8), kv_heads=heads,
                          seq_k=seq)  # type: ignore[arg-type]


def _profile(nk: int, block: int = 4) -> HeadProfile:
    """Two causal heads: head 0 attends only to its own key, head 1 only to key 0 (a sink);
    every value row is distinct, so a layout that drops the attended key changes the output."""
    seq = nk * block
    p = np.zeros((1, 2, seq, seq))
    p[0, 0, np.arange(seq), np.arange(seq)] = 1.0
    p[0, 1, :, 0] = 1.0
    p[0, 1, :, :] = 0.99 * p[0, 1] + 0.01 * np.tril(np.ones((seq, seq))) / np.arange(1, seq + 1)[:, None]
    v = np.random.default_rng(0).standard_normal((1, 2, seq, 8))
    acc = _Accumulator(_match(2, seq), block, True, topk=False)
    acc.add(p, v, np.ones((1, seq)))
    return acc.profile("blk")


def test_window_candidates_grow_and_stay_below_all_blocks() -> None:
    assert window_candidates(1) == []
    c = window_candidates(40)
    assert c[:4] == [1, 2, 3, 4] and all(a < b for a, b in zip(c, c[1:], strict=False)) and c[-1] < 40
    assert candidates(6, True, 4)[0] == (ALL_BLOCKS, 0, 0)
    dynamic = [c for c in candidates(6, True, 4) if c[2]]
    assert dynamic and all(w + s + t < 6 for w, s, t in dynamic)
    assert not any(c[2] for c in candidates(6, True, 4, topk=False))


def test_profile_error_is_zero_for_dense_and_for_layouts_that_keep_the_attended_keys() -> None:
    prof = _profile(8)
    assert np.allclose(prof.error[:, 0], 0.0) and np.allclose(prof.captured[:, 0], 1.0)
    local1 = prof.layouts.index((1, 0, 0))
    sink1 = prof.layouts.index((1, 1, 0))
    assert prof.error[0, local1] < 1e-12  # the diagonal head keeps its key
    assert prof.error[1, local1] > 0.1 and prof.error[1, sink1] < 0.01  # the sink head needs block 0


def test_auto_gives_each_head_the_blocks_it_reads() -> None:
    prof = _profile(8)
    layouts = choose_layouts({"blk": prof}, density=0.35)["blk"]
    near, sink = layouts
    assert near.local == 1 and near.error < 1e-12
    assert sink.sinks >= 1 and sink.error < 0.01
    kept = sum(h.kept_blocks for h in layouts)
    assert kept <= 0.35 * sum(h.dense_blocks for h in layouts) + 1e-9
    # One window for both heads at that density cannot serve the sink head.
    w = uniform_window({"blk": prof}, 0.35)
    assert prof.error[1, prof.layouts.index((w, 0, 0))] > 10 * sink.error


def test_dynamic_candidates_follow_the_ops_run_time_choice() -> None:
    """Each head reads one far key block whose keys match its queries; the profile's top-k
    candidates must find it (error ~0 at topk=1) and count their blocks as the op keeps them."""
    from sparsec.dialect.attention import BlockLayout

    nk, block, d = 8, 4, 8
    seq = nk * block
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, seq, d)) * 0.05
    k = rng.standard_normal((1, 2, seq, d)) * 0.05
    q[..., 0] += 1.0
    k[0, 0, 4:8, 0] = 6.0  # head 0 reads block 1
    k[0, 1, 12:16, 0] = 6.0  # head 1 reads block 3
    s = np.einsum("bhid,bhjd->bhij", q, k) + np.triu(np.full((seq, seq), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    v = rng.standard_normal((1, 2, seq, d))
    acc = _Accumulator(_match(2, seq), block, True)
    acc.add(p, v, np.ones((1, seq)), q, k)
    prof = acc.profile("blk")
    c = prof.layouts.index((1, 0, 1))
    assert prof.error[:, c].max() < 0.05 < prof.error[:, prof.layouts.index((1, 0, 0))].min()
    layout = BlockLayout(block, True, (1,), (0,), None, (1,))
    assert prof.kept[c] == round(layout.density(1, seq, seq) * prof.kept[0])
    # The profile's blocks are the op's: rebuild them from the run-time rule.
    dyn = acc._dynamic(q, k, seq, seq)
    assert (dyn[c] == layout.dynamic_blocks(q, k)).all()


def test_density_one_keeps_everything_dense() -> None:
    layouts = choose_layouts({"blk": _profile(6)}, density=1.0)["blk"]
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
    # The output check ran per block; a block judged "static" has no run-time top-k heads.
    families = auto["family_check"]
    assert set(families) == {b["block"] for b in stats["stats"]["rewritten"]}
    for block in stats["stats"]["rewritten"]:
        f = families[block["block"]]
        if "cosine_topk" in f:
            assert f["family"] == ("topk" if f["cosine_topk"] > f["cosine_static"] else "static")
        if f["family"] == "static":
            assert not any(block["topk_blocks"] if isinstance(block["topk_blocks"], list) else [block["topk_blocks"]])
    for block in stats["stats"]["rewritten"]:
        assert len(block["captured_mass"]) == 4 and all(0.0 < c <= 1.0 + 1e-6 for c in block["captured_mass"])
        assert len(block["head_error"]) == 4 and all(e >= 0.0 for e in block["head_error"])
    fid = stats["fidelity"]
    assert np.isfinite(fid["max_abs"]) and fid["worst_cosine"] > 0.5  # no NaN from rows left without keys
    ops = {(n.domain, n.op_type) for n in onnx.load(out / "model.onnx").graph.node}
    assert ("com.sparsec.kernels", "SparseAttention") in ops
    # The report draws the layouts and tabulates them per attention block.
    assert (out / "attention_layouts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Sparse attention" in report and "![attention layouts](attention_layouts.png)" in report


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
