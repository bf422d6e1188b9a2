"""Runs the C test driver under ASan/UBSan and, cross-compiled, under qemu-aarch64.
Each skips cleanly when its toolchain is absent (kernels/ci_setup.sh installs them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "kernels" / "tests_c"
SKIP = 77


@pytest.mark.parametrize("script", ["run_sanitizers.sh", "run_arm_qemu.sh"])
@pytest.mark.slow
def test_c_driver(script: str) -> None:
    proc = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == SKIP:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout
