"""Every fenced shell and Python example in README.md runs as written.

Placeholders get real files in a scratch folder: `model.onnx` is made by the README's own
`sparsec zoo export digits_cnn -o model.onnx` line (run first), `data.npz` holds real digits
images. Commands run in-process (`sparsec.cli.main`) to keep the test fast; optional
`[--flag]` parts run both without and with them. What does not run, and why, is in SKIP and
SUBSTITUTE below.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from sparsec.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"

# Lines that are not run, by prefix, with the reason.
SKIP = {
    "make demo": "creates the virtual environment first (the Makefile's set-up); its compile is `sparsec compile --demo`",
    "make test": "runs the whole test suite",
    "sparsec bench": "a benchmark (dense vs compiled latency), not an example to check",
    "sparsec compile model.onnx --target=arm64 --backend=tvm": "the same compile (digits_cnn, arm64, TVM) "
    "is tests/arm64/test_tvm_arm64.py, which also runs its library under qemu (12 s of TVM build here)",
}
# Stand-ins, with the reason: a BERT export takes about a minute on the shared 2-core machine;
# compiling zoo: names is tested in tests/cli/test_round_trips.py and tests/e2e; a model bigger
# than memory is what tests/core/test_memory_lean.py builds (the flag itself runs here); BERT
# and Mixtral exports for the MoE lines are what tests/moe builds (here the flags run, on a
# model with nothing to change, and must still exit 0).
SUBSTITUTE = {"zoo:bert": "model.onnx", "big.onnx": "model.onnx", "bert.onnx": "model.onnx", "mixtral.onnx": "model.onnx", "val.npz": "data.npz"}


def _blocks() -> list[tuple[str, str]]:
    """(kind, text) of every fenced block that is a shell or Python example."""
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        lines = [line for line in body.splitlines() if line.strip()]
        if lang == "python":
            out.append(("python", body))
        elif lang == "sh" or (lang == "" and lines and all(line.startswith(("sparsec ", "    ")) for line in lines)):
            out.append(("sh", body))
    return out


def _commands(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _variants(line: str) -> list[str]:
    """`cmd [--a] [--b x]` -> ["cmd", "cmd --a --b x"]."""
    optional = re.findall(r"\s\[(--[^\]]+)\]", line)
    base = re.sub(r"\s\[--[^\]]+\]", "", line)
    return [base] + ([f"{base} {' '.join(optional)}"] if optional else [])


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    old_umask = os.umask(0o022)
    try:
        _run_examples(capsys)
    finally:
        os.umask(old_umask)
    # Exports and artifacts get the modes of any file created under umask 022.
    assert stat.S_IMODE(Path("model.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE(Path("out").stat().st_mode) == 0o755
    assert stat.S_IMODE(Path("out/model.onnx").stat().st_mode) == 0o644


def _run_examples(capsys) -> None:
    from sparsec.models_zoo.digits import load_digits_split

    x_train = load_digits_split()[0]
    np.savez("data.npz", input=x_train[:32].numpy().astype(np.float32))
    blocks = _blocks()
    commands = [c for kind, body in blocks if kind == "sh" for c in _commands(body)]
    export = next(c for c in commands if c.startswith("sparsec zoo export"))
    commands.remove(export)
    ran, skipped = [], []
    for line in [export, *commands]:
        reason = next((why for prefix, why in SKIP.items() if line.startswith(prefix)), None)
        if reason is not None:
            skipped.append(line)
            continue
        for old, new in SUBSTITUTE.items():
            line = line.replace(old, new)
        for variant in _variants(line):
            argv = shlex.split(variant, comments=True)
            assert argv[0] == "sparsec", variant
            start = time.perf_counter()
            rc = main(argv[1:])
            captured = capsys.readouterr()
            assert rc == 0, f"{variant}: exit {rc}\n{captured.err[-2000:]}"
            ran.append((variant, round(time.perf_counter() - start, 1)))
    for kind, body in blocks:
        if kind == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme_example"})
            ran.append(("python block", 0))
    assert Path("out/manifest.json").is_file() and Path("out/bert/manifest.json").is_file()
    assert len(ran) >= 20 and {"make demo", "make test", "sparsec bench zoo:mlp --sparsity=2:4"} <= {
        s.split("#")[0].strip() for s in skipped
    }
