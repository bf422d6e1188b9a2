"""SIGTERM during a compile: exit 143 with one line, temporary folders removed, no artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sparsec.ir.io import write_model
from sparsec.testing import mlp_model


def test_sigterm_removes_spill_folders_and_writes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "big.onnx"  # 32 MB of weights: above a quarter of a 64M budget
    write_model(mlp_model(1, (2048, 2048, 2048), name="big"), model, external=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "art"
    env = {**os.environ, "TMPDIR": str(scratch)}
    # A tiny memory budget: the compile streams, so its spill folder exists from the start.
    cmd = [sys.executable, "-m", "sparsec.cli", "compile", str(model), "-o", str(out), "--max-memory=64M",
           "--sparsity=2:4", "--no-tune"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(scratch.glob("sparsec-spill-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the compile proper (a signal inside mkdtemp itself can leave the folder)
    assert proc.poll() is None, "the compile ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "sparsec: terminated"
    assert "Traceback" not in err
    assert not list(scratch.glob("*sparsec*")), "temporary folders left behind"
    assert not out.exists()
