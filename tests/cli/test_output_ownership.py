"""Output folders: sparsec replaces only what it wrote and never deletes anything else."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sparsec.artifact import MANIFEST, check_output_dir, write_artifact
from sparsec.errors import OutputError

from .helpers import run, write_mlp


def compile_to(capsys, model: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, ["compile", str(model), "-o", str(out), "--no-bench", *extra])


def test_issue_reproduction_keeps_subfolder_and_notes(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    a = tmp_path / "A"
    assert compile_to(capsys, model, a)[0] == 0
    assert compile_to(capsys, model, a / "sub")[0] == 0
    (a / "notes.txt").write_text("important\n")
    first = json.loads((a / MANIFEST).read_text())
    rc, _, err = compile_to(capsys, model, a, "--sparsity=1:8")
    assert rc == 0, err
    assert (a / "notes.txt").read_text() == "important\n"
    assert json.loads((a / "sub" / MANIFEST).read_text())["pipeline"] == first["pipeline"]
    assert "n=1 m=8" in json.loads((a / MANIFEST).read_text())["pipeline"]
    assert not [p for p in a.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_foreign_folder_is_refused_then_forced(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "b.txt").write_text("b")
    (out / "a.txt").write_text("a")
    rc, _, err = compile_to(capsys, model, out)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("sparsec: error:") and "'a.txt'" in err and "--force" in err
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt"]
    rc, _, err = compile_to(capsys, model, out, "--force")
    assert rc == 0, err
    assert (out / "a.txt").read_text() == "a" and (out / "b.txt").read_text() == "b"
    assert (out / MANIFEST).is_file()
    # Now it is an artifact: a rerun needs no --force and still keeps the user's files.
    assert compile_to(capsys, model, out)[0] == 0
    assert (out / "a.txt").read_text() == "a"


def test_stale_owned_files_go_foreign_files_stay(tmp_path) -> None:
    out = tmp_path / "art"
    manifest = {"sparsec_version": "x", "files": ["model.onnx", "manifest.json", "old.png"]}
    write_artifact(out, {"model.onnx": b"1", "old.png": b"p", MANIFEST: json.dumps(manifest).encode()})
    (out / "keep.txt").write_text("k")
    new = {"sparsec_version": "x", "files": ["model.onnx", "manifest.json"]}
    write_artifact(out, {"model.onnx": b"2", MANIFEST: json.dumps(new).encode()})
    assert sorted(os.listdir(out)) == ["keep.txt", "manifest.json", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"2"


def test_crafted_manifest_cannot_reach_outside(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("v")
    out = tmp_path / "art"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"sparsec_version": "x", "files": ["../victim.txt", "/etc/passwd"]}))
    (out / "other").write_text("o")
    write_artifact(out, {"model.onnx": b"1", MANIFEST: json.dumps({"sparsec_version": "x", "files": []}).encode()})
    assert victim.read_text() == "v" and (out / "other").read_text() == "o"
    with pytest.raises(ValueError):
        write_artifact(out, {"../x": b""})


def test_not_a_sparsec_manifest_is_foreign(tmp_path) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / MANIFEST).write_text('{"name": "someone else\'s"}')
    with pytest.raises(OutputError, match="'manifest.json'"):
        check_output_dir(out)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_output_fails_before_any_pass(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    rc, out, err = run(capsys, ["compile", str(model), "-o", "/proc/x"])
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "/proc" in err and "not writable" in err  # no pass ran
    dump = tmp_path / "dump"
    rc, _, err = run(capsys, ["opt", str(model), "-p", "nm-sparsity", "-o", "/proc/x.onnx", "--ir-dump-dir", str(dump)])
    assert rc == 2 and "not writable" in err and not dump.exists()


def test_modes_follow_the_umask(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    old = os.umask(0o022)
    try:
        assert compile_to(capsys, model, tmp_path / "art")[0] == 0
        assert run(capsys, ["opt", str(model), "-p", "nm-sparsity", "-o", str(tmp_path / "s.onnx")])[0] == 0
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "art") == 0o755
    assert {f.name: mode(f) for f in (tmp_path / "art").iterdir()} == {f.name: 0o644 for f in (tmp_path / "art").iterdir()}
    assert mode(tmp_path / "s.onnx") == 0o644


def test_ir_dump_dir_reuse_replaces_only_its_own_files(capsys, tmp_path) -> None:
    model = write_mlp(tmp_path)
    dump = tmp_path / "dump"

    def opt(pipeline: str) -> tuple[int, str, str]:
        return run(capsys, ["opt", str(model), "-p", pipeline, "--ir-dump-dir", str(dump)])

    assert opt("nm-sparsity,legalize-dense")[0] == 0
    assert sorted(p.name for p in dump.glob("*.txt")) == ["00_input.txt", "01_nm-sparsity.txt", "02_legalize-dense.txt"]
    (dump / "mine.txt").write_text("m")
    assert opt("nm-sparsity")[0] == 0
    assert sorted(p.name for p in dump.glob("*.txt")) == ["00_input.txt", "01_nm-sparsity.txt", "mine.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    rc, _, err = run(capsys, ["opt", str(model), "-p", "nm-sparsity", "--ir-dump-dir", str(other)])
    assert rc == 2 and "'x'" in err and sorted(os.listdir(other)) == ["x"]
