"""Loud outcomes (verdict, exit status 3) and flags that mean one thing."""

from __future__ import annotations

import json

import pytest

from sparsec.cli.main import main
from sparsec.ir.io import save_model
from sparsec.testing import make_model, seeded
from sparsec.verdict import VERDICT_EXIT, judge

from .helpers import run, write_mlp


def compile_(capsys, tmp_path, *extra: str, out: str = "out") -> tuple[int, str, str, dict]:
    model = write_mlp(tmp_path)
    # --prune-all: these layers are too small to run faster sparse, and the verdicts under test
    # need them pruned anyway (by default the cpu target would leave them dense).
    argv = ["compile", str(model), "-o", str(tmp_path / out), "--no-bench", *extra]
    if "-p" not in extra:
        argv.append("--prune-all")
    rc, stdout, stderr = run(capsys, argv)
    path = tmp_path / out / "manifest.json"
    return rc, stdout, stderr, json.loads(path.read_text()) if path.is_file() else {}


def test_summary_states_pipeline_in_words_and_ends_with_verdict(capsys, tmp_path) -> None:
    rc, out, _, m = compile_(capsys, tmp_path, "--min-cosine=-1")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0].endswith(": 2:4 sparsity (magnitude) for cpu")
    assert lines[-1] == "verdict: ok" and m["verdict"]["status"] == "ok"
    assert "## Verdict" in (tmp_path / "out" / "report.md").read_text()


def test_fidelity_floor_fails_with_artifact_written(capsys, tmp_path) -> None:
    rc, out, err, m = compile_(capsys, tmp_path, "--sparsity=1:8", "--min-cosine=0.9999")
    assert rc == VERDICT_EXIT
    assert m["verdict"]["status"] == "fail" and "fidelity below the floor" in m["verdict"]["problems"][0]
    assert out.strip().splitlines()[-1].startswith("verdict: FAILED: fidelity below the floor")
    assert "sparsec: error: fidelity below the floor" in err and "marks it failed" in err
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_default_floor_warns_on_random_inputs_and_binds_on_real_samples(capsys, tmp_path) -> None:
    rc, out, err, m = compile_(capsys, tmp_path, "--sparsity=1:8")
    assert m["fidelity"]["worst_cosine"] < 0.9, "the test needs a lossy compile"
    assert m["fidelity"]["inputs"] == "random"
    assert rc == 0 and m["verdict"]["status"] == "warn"
    assert "warning: fidelity below the floor" in err and out.strip().splitlines()[-1].startswith("verdict: ok with warnings")
    rc, _, err, m = compile_(capsys, tmp_path, "--sparsity=1:8", "--strict", out="strict")
    assert rc == VERDICT_EXIT and m["verdict"]["status"] == "fail" and m["verdict"]["strict"]
    # Measured on calibration samples, the default floor is binding.
    m["fidelity"]["inputs"] = "calibration"
    v = judge(m, changed=True, requested=True, min_cosine=None, real_samples=True)
    assert v.status == "fail" and "fidelity below the floor" in v.problems[0]


def test_nothing_sparsified_says_why(capsys, tmp_path) -> None:
    rc, out, err, m = compile_(capsys, tmp_path, "--sparsity=2:3", "--min-cosine=-1")
    assert rc == 0
    assert "nothing was sparsified: 2 layers:" in out and "nothing was sparsified" in err
    rc, *_ = compile_(capsys, tmp_path, "--sparsity=2:3", "--strict", out="strict")
    assert rc == VERDICT_EXIT
    rc, out, err, m = compile_(capsys, tmp_path, "--sparsity=none", out="dense")  # dense on purpose
    assert rc == 0 and m["verdict"]["status"] == "ok" and "no optimisation (dense)" in out


def test_slower_than_dense_is_a_problem() -> None:
    manifest = {
        "fidelity": {"worst_cosine": 1.0},
        "latency": {"measured": True, "dense_ms": 1.971, "compiled_ms": 6.079, "speedup": 0.32},
        "decisions": [],
    }
    v = judge(manifest, changed=True, requested=True, min_cosine=None, real_samples=False)
    assert v.status == "fail" and "slower than dense" in v.problems[0] and "0.32x" in v.problems[0]
    manifest["latency"]["speedup"] = 0.98  # within timing noise
    assert judge(manifest, changed=True, requested=True, min_cosine=None, real_samples=False).status == "ok"


def test_quiet_prints_only_errors(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    # --prune-all: prune the tiny layers even where they run no faster (else "nothing was sparsified" warns).
    argv = ["-q", "compile", str(model), "-o", str(tmp_path / "q"), "--no-bench", "--sparsity=1:8", "--prune-all"]
    rc, out, err = run(capsys, argv)
    assert rc == 0 and out == "" and err == ""
    rc, out, err = run(capsys, [*argv, "--strict"])
    assert rc == VERDICT_EXIT and out == "" and err.startswith("sparsec: error: fidelity below the floor")
    # The flag after the command works the same; -v before it is not undone by the command.
    rc, out, err = run(capsys, [*argv[1:3], "-q", *argv[3:]])
    assert rc == 0 and out == "" and err == ""
    assert main(["pipeline", "show", "--sparsity=2:4", "-q"]) == 0 and capsys.readouterr().out
    from sparsec.cli.main import build_parser

    assert build_parser().parse_args(["-v", "zoo", "list"]).verbose == 1


def test_crop_alone_crops_only(capsys) -> None:
    assert main(["pipeline", "show", "--crop=0.5"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("crop-channels{macs=0.5") and "nm-sparsity" not in text
    assert main(["pipeline", "show", "--crop=0.5", "--sparsity=2:4"]) == 0
    assert "nm-sparsity{n=2 m=4" in capsys.readouterr().out
    assert main(["pipeline", "show"]) == 0
    assert capsys.readouterr().out.startswith("nm-sparsity{n=2 m=4")


@pytest.mark.parametrize("flag", ["--sparsity=1:8", "--crop=0.5", "--criterion=wanda"])
def test_pipeline_with_technique_flag_is_an_error(capsys, flag) -> None:
    rc, _, err = run(capsys, ["pipeline", "show", "-p", "nm-sparsity", flag])
    assert rc == 2 and err.startswith("sparsec: error: -p/--pipeline spells the whole pipeline") and flag.split("=")[0] in err


def test_unknown_and_fixed_dims_are_errors(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    rc, _, err = run(capsys, ["inspect", str(model), "--dim", "batchx=8"])
    assert rc == 2 and "no symbolic input dimension 'batchx'" in err and "batch" in err
    assert run(capsys, ["inspect", str(model), "--dim", "batch=8"])[0] == 0
    fixed = make_model(
        '<ir_version: 10, opset_import: ["" : 18]>\nf (float[1,64] x) => (float[1,32] y) { y = MatMul(x, w) }',
        w=seeded((64, 32), 1),
    )
    save_model(fixed, tmp_path / "fixed.onnx")
    for argv in (["inspect"], ["opt", "-p", "nm-sparsity"], ["compile", "-o", str(tmp_path / "o")]):
        rc, _, err = run(capsys, [argv[0], str(tmp_path / "fixed.onnx"), *argv[1:], "--dim", "seq=128"])
        assert rc == 2 and "input shapes are fixed: x[1,64]" in err, err
    assert not (tmp_path / "o").exists()


def test_help_documents_exit_status(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "3  compile: the artifact was written, but failed its verdict" in out
