"""`sparsec compile --sparsity=auto --min-fidelity --calib` end to end on a small ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import save_npz
from sparsec.cli.main import main


@pytest.fixture
def files(tmp_path: Path, mlp, correlated) -> tuple[Path, Path]:  # noqa: ANN001
    model_file = tmp_path / "mlp.onnx"
    ir.save(mlp, model_file)
    calib = save_npz(tmp_path / "calib.npz", {"x": correlated(128, 32, seed=3)})
    return model_file, calib


def test_compile_auto_meets_floor_and_reports(tmp_path: Path, files, capsys) -> None:  # noqa: ANN001
    model_file, calib = files
    out = tmp_path / "out"
    argv = ["-q", "compile", str(model_file), "--sparsity=auto", "--min-fidelity=0.97", "--calib", str(calib),
            "-o", str(out), "--no-bench"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    alloc = next(p for p in manifest["passes"] if p["pass"].startswith("allocate"))
    assert alloc["stats"]["measured_fidelity"] >= 0.97
    choices = [d for d in manifest["decisions"] if d["pass"] == "allocate"]
    assert len(choices) == 3 and all(d["why"] for d in choices)
    assert {"sensitivity.png", "allocation.png"} <= set(manifest["files"])
    report = (out / "report.md").read_text()
    assert "## Allocation" in report and "![sensitivity curves per layer](sensitivity.png)" in report


def test_preset_auto_expands_to_allocate(tmp_path: Path, files, capsys) -> None:  # noqa: ANN001
    assert main(["pipeline", "show", "--sparsity=auto", "--min-fidelity=0.98"]) == 0
    assert "allocate{" in capsys.readouterr().out
    assert main(["pipeline", "show", "--sparsity=2:4", "--criterion=sparsegpt"]) == 0
    assert "criterion=sparsegpt" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calib", "nope.npz"], "calibration file nope.npz: no such file"),
        (["--min-fidelity=1.5"], "expected a cosine between 0 and 1"),
        ([], "needs calibration data"),
    ],
)
def test_auto_errors_are_one_line(tmp_path: Path, files, capsys, extra: list[str], message: str) -> None:  # noqa: ANN001
    model_file, _ = files
    code = main(["-q", "compile", str(model_file), "--sparsity=auto", "-o", str(tmp_path / "o"), "--no-bench", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_bad_npz_contents_named(tmp_path: Path, files, capsys) -> None:  # noqa: ANN001
    model_file, _ = files
    bad = save_npz(tmp_path / "bad.npz", {"x": np.zeros((4, 7), np.float32)})
    assert main(["-q", "compile", str(model_file), "--sparsity=auto", "--calib", str(bad), "-o", str(tmp_path / "o"), "--no-bench"]) == 2
    err = capsys.readouterr().err
    assert "bad.npz: input 'x' has shape [4, 7] (samples on axis 0), the model takes [N, 32]" in err and err.count("\n") == 1
