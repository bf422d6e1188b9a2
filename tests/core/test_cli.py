"""The CLI: every bad input gives one line and exit 2 and writes nothing; happy paths work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from sparsec.cli.main import main
from sparsec.ir.io import save_model
from sparsec.nm_pattern import nm_violations
from sparsec.testing import make_model


@pytest.fixture
def model_file(tmp_path, mlp) -> Path:
    path = tmp_path / "mlp.onnx"
    save_model(mlp, path)
    return path


def fails(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sparsec: error:") and message in err, err


def test_missing_file(capsys, tmp_path) -> None:
    fails(capsys, ["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o")], "no such file")
    assert not (tmp_path / "o").exists()


def test_empty_truncated_and_not_onnx(capsys, tmp_path, model_file) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    fails(capsys, ["compile", str(empty), "-o", str(tmp_path / "o")], "file is empty")
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    fails(capsys, ["compile", str(truncated), "-o", str(tmp_path / "o")], "not")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    fails(capsys, ["compile", str(text), "-o", str(tmp_path / "o")], "not")
    fails(capsys, ["inspect", str(tmp_path)], "is a directory")
    assert not (tmp_path / "o").exists()


def test_unsupported_opset_and_op(capsys, tmp_path) -> None:
    old = make_model('<ir_version: 3, opset_import: ["" : 6]>\ng (float[1,4] x) => (float[1,4] y) { y = Relu(x) }')
    save_model(old, tmp_path / "old.onnx")
    fails(capsys, ["compile", str(tmp_path / "old.onnx"), "-o", str(tmp_path / "o")], "opset 6 is not supported")
    alien = make_model(
        '<ir_version: 10, opset_import: ["" : 18, "com.acme" : 1]>\n'
        'g (float[1,4] x) => (float[1,4] y) { y = com.acme.Warp(x) }'
    )
    save_model(alien, tmp_path / "alien.onnx")
    fails(capsys, ["compile", str(tmp_path / "alien.onnx"), "-o", str(tmp_path / "o")], "op 'Warp' of domain 'com.acme'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("spec", "msg"), [("5:4", "N must be smaller than M"), ("0:4", "at least 1"), ("2:3.5", "two integers"),
                                         ("150%", "between 0 and 1"), ("u:0", "between 0 and 1"), ("u:x", "a percentage like 80%")])
def test_bad_sparsity(capsys, tmp_path, model_file, spec, msg) -> None:
    fails(capsys, ["compile", str(model_file), f"--sparsity={spec}", "-o", str(tmp_path / "o")], msg)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec", ["80%", "u:0.8"])
def test_unstructured_sparsity_flag_expands_to_sparsify(capsys, spec) -> None:
    assert main(["pipeline", "show", f"--sparsity={spec}", "--criterion=wanda"]) == 0
    out = capsys.readouterr().out
    assert "sparsify{pattern=u:0.8 criterion=wanda" in out and "nm-sparsity" not in out


def test_bad_pipelines(capsys, tmp_path, model_file) -> None:
    fails(capsys, ["opt", str(model_file), "-p", "nm-sparsity,warp-drive"], "unknown pass 'warp-drive'")
    fails(capsys, ["opt", str(model_file), "-p", "nm-sparsity{speed=11}"], "has no option 'speed'")
    fails(capsys, ["compile", str(model_file), "-p", "nm-sparsity{n=x}", "-o", str(tmp_path / "o")], "expected an integer")
    fails(capsys, ["opt", str(model_file)], "needs a pipeline")
    assert not (tmp_path / "o").exists()


def test_unwritable_output(capsys, tmp_path, model_file) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, ["compile", str(model_file), "-o", str(blocker)], "not a directory")
    fails(capsys, ["compile", str(model_file), "-o", str(blocker / "sub" / "dir")], "is not a directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "precious.txt").write_text("keep")
    fails(capsys, ["compile", str(model_file), "-o", str(full)], "holds no sparsec artifact (first entry: 'precious.txt')")
    assert (full / "precious.txt").read_text() == "keep"
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        fails(capsys, ["compile", str(model_file), "-o", str(ro / "o")], "not writable")


def test_unknown_option_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compile", "--warp=9"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compile_end_to_end(capsys, tmp_path, model_file) -> None:
    out = tmp_path / "new" / "art"  # missing parents are created
    assert main(["compile", str(model_file), "-o", str(out), "-p", "nm-sparsity{min_params=0}"]) == 0
    stdout = capsys.readouterr().out
    assert "artifact:" in stdout and "fidelity vs dense" in stdout and "latency on ort" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"].startswith("nm-sparsity{n=2 m=4")
    assert manifest["latency"]["dense_ms"] > 0 and manifest["latency"]["compiled_ms"] > 0
    assert 0 < manifest["fidelity"]["worst_cosine"] < 1
    assert {d["weight"] for d in manifest["decisions"]} == {"w1", "w2"}
    model = onnx.load(out / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert nm_violations(weights["w1"], 2, 4, axis=1) == 0 and nm_violations(weights["w2"], 2, 4, axis=0) == 0
    ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert "report.md" in os.listdir(out) and "# sparsec compile report" in (out / "report.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".art.")]  # no temp leftovers


def test_same_input_gives_byte_identical_model(tmp_path, model_file) -> None:
    for name in ("a", "b"):
        assert main(["-q", "compile", str(model_file), "-o", str(tmp_path / name), "--no-bench"]) == 0
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    # An existing artifact is replaced atomically.
    assert main(["-q", "compile", str(model_file), "-o", str(tmp_path / "a"), "--sparsity=1:8", "--no-bench"]) == 0
    assert "n=1 m=8" in json.loads((tmp_path / "a" / "manifest.json").read_text())["pipeline"]


def test_opt_instruments(capsys, tmp_path, model_file) -> None:
    dump = tmp_path / "dump"
    rc = main(["opt", str(model_file), "-p", "nm-sparsity{n=1 m=8 min_params=0}", "-o", str(tmp_path / "o.onnx"),
               "--print-ir-after-all", "--ir-dump-dir", str(dump), "--pass-statistics", "--pass-timing"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "// ----- IR after nm-sparsity{n=1 m=8 min_params=0} (changed) -----" in captured.out
    assert "com.sparsec.NMSparse<axis=1, m=8, n=1>(%w1)" in captured.out
    assert "layers_pruned: 2" in captured.err and "pass execution timing" in captured.err
    assert sorted(p.name for p in dump.glob("*.txt")) == ["00_input.txt", "01_nm-sparsity.txt"]
    # The written IR keeps the com.sparsec markers and loads back.
    assert main(["inspect", str(tmp_path / "o.onnx")]) == 0
    assert "1:8" in capsys.readouterr().out


def test_pipeline_show_round_trips(capsys) -> None:
    assert main(["pipeline", "show", "-p", "nm-sparsity{n=4 m=8}"]) == 0
    full = capsys.readouterr().out.strip()
    assert main(["pipeline", "show", "-p", full]) == 0
    assert capsys.readouterr().out.strip() == full


def test_inspect_json(capsys, model_file) -> None:
    assert main(["inspect", str(model_file), "--json", "--dim", "N=2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["macs"] == 2 * 32 * 16 + 2 * 8 * 32


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "sparsec"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsec.cli"]
    result = subprocess.run([*cmd, "passes", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "nm-sparsity" in result.stdout


def test_bench_prints_json(capsys, model_file) -> None:
    assert main(["-q", "bench", str(model_file), "-p", "nm-sparsity{min_params=0}"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latency"]["measured"] and data["latency"]["dense_ms"] > 0
    assert data["pipeline"].startswith("nm-sparsity{n=2 m=4") and 0 < data["fidelity"]["worst_cosine"] <= 1
