"""SIGTERM during a compile: exit 143 with one line, temporary folders removed, no artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sparsec.ir.io import write_model
from sparsec.testing import mlp_model


def test_sigterm_removes_spill_folders_and_writes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "big.onnx"  # 80 MB of weights: above a quarter of a 64M budget
    write_model(mlp_model(1, (2048,) * 6, name="big"), model, external=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "art"
    env = {**os.environ, "TMPDIR": str(scratch)}
    # A tiny memory budget: the compile streams, so its spill folder exists from the start.
    cmd = [sys.executable, "-m", "sparsec.cli", "compile", str(model), "-o", str(out), "--max-memory=64M",
           "--sparsity=2:4", "--no-tune", "-v"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:  # into the pipeline proper: its first pass has begun (a compile
        seen.append(line)  # of this size then still has a second or so to go)
        if "nm-sparsity ..." in line:
            break
    assert any(scratch.glob("sparsec-spill-*")), "".join(seen)
    assert proc.poll() is None, "the compile ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "sparsec: terminated"
    assert "Traceback" not in err
    assert not list(scratch.glob("*sparsec*")), "temporary folders left behind"
    assert not out.exists()
