"""`sparsec tune` and the compile flags around it (--prune-all, --no-tune)."""

from __future__ import annotations

import json

import pytest

from sparsec.cli.main import main
from sparsec.kernels import kernels_available

from .models import write_two_layers


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "missing.onnx"], "missing.onnx"),
        (["tune", "MODEL", "--sparsity=5:4"], "5:4"),
        (["tune", "MODEL", "--sparsity=4:4"], "4:4"),
        (["tune", "MODEL", "--threads=0"], "--threads=0"),
        (["tune", "MODEL", "--budget=-1"], "--budget=-1"),
        (["tune", "MODEL", "--dim", "x"], "--dim"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message) -> None:
    model = str(write_two_layers(tmp_path))
    rc, out, err = run(capsys, [a.replace("MODEL", model) for a in argv])
    assert rc == 2, err
    assert err.startswith("sparsec: error:") and err.count("\n") == 1 and message in err
    assert out == ""


@pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")
def test_tune_measures_then_reuses(tmp_path, capsys) -> None:
    model = str(write_two_layers(tmp_path))
    rc, out, err = run(capsys, ["tune", model, "--json"])
    assert rc == 0, err
    first = json.loads(out)
    assert first["shapes_measured"] == 1 and len(first["layers"]) == 2
    assert all(r["dense_us"] > 0 and r["sparse_us"] > 0 and not r["cached"] for r in first["layers"])
    rc, out, _ = run(capsys, ["tune", model, "--json"])
    second = json.loads(out)
    assert second["shapes_measured"] == 0 and all(r["cached"] for r in second["layers"])
    rc, out, _ = run(capsys, ["tune", model])
    assert rc == 0 and "dense us" in out and "(cached)" in out


def test_prune_all_is_a_technique_flag(capsys) -> None:
    rc, out, _ = run(capsys, ["pipeline", "show", "--sparsity=2:4", "--prune-all"])
    assert rc == 0 and "only_faster=true" not in out
    rc, out, _ = run(capsys, ["pipeline", "show", "--sparsity=2:4"])
    assert rc == 0 and "only_faster=true" in out
    rc, _, err = run(capsys, ["pipeline", "show", "-p", "nm-sparsity", "--prune-all"])
    assert rc == 2 and "--prune-all" in err


@pytest.mark.skipif(not kernels_available(), reason="sparsec kernels are not built")
def test_inspect_shows_each_layers_lowering_choice(tmp_path, capsys) -> None:
    model = str(write_two_layers(tmp_path))
    rc, _, err = run(capsys, ["compile", model, "-o", str(tmp_path / "out"), "--no-bench"])
    assert rc == 0, err
    rc, out, _ = run(capsys, ["inspect", str(tmp_path / "out")])
    assert rc == 0 and "lowering (measured on this machine" in out
    assert out.count(" us vs sparse ") == 2  # both layers, with their measured times
    rc, out, _ = run(capsys, ["inspect", str(tmp_path / "out"), "--json"])
    layers = json.loads(out)["lowering"]["layers"]
    assert {e["weight"] for e in layers} == {"w1", "w2"} and all(e["dense_us"] > 0 for e in layers)
