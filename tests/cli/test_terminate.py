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


QUICK_EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from sparsec.cli.main import entry

out = Path(sys.argv[1])
threading.Thread(target=time.sleep, args=(600,), daemon=True, name="monitor").start()  # as tqdm's
atexit.register(lambda: (out / "hook").write_text("ran"))

class Teardown:  # freed only by interpreter shutdown, which the quick exit skips
    def __del__(self):
        (out / "teardown").write_text("ran")

keep = Teardown()
sys.argv = ["sparsec", "passes", "list"]
entry()
"""


def test_the_command_exits_without_teardown_beside_a_daemon_thread(tmp_path: Path) -> None:
    """`entry` skips interpreter teardown (0.3 s after a BERT-base compile) even while a daemon
    thread such as tqdm's monitor is alive; the exit hooks still run and the output is flushed."""
    proc = subprocess.run([sys.executable, "-c", QUICK_EXIT_PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nm-sparsity" in proc.stdout
    assert (tmp_path / "hook").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()
