"""The report's per-layer bytes plot, drawn in a second process while the compile goes on.

matplotlib takes ~0.75 s for it (0.3 s of import, then laying out and rasterising one rotated
label per layer), which was the tail of a BERT-base compile once its fidelity run shared the
last check's. A fresh interpreter (`figures_worker.py`, which imports no sparsec) starts
drawing as soon as the plot's inputs exist, before the backend lowers, on the core the
lowering leaves idle; a thread would hold the GIL the compile needs. A compile that measures
latency starts it only after its measurements, which must have the cores to themselves. A process that already
imported matplotlib (a test run, a notebook) draws in process at the end instead, where it
only costs the drawing; so does any failure of the worker (the picture is the same).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sparsec.report import sparsity_plot_data

WORKER = Path(__file__).with_name("figures_worker.py")
WORKER_TIMEOUT_S = 120


class BytesPlotJob:
    """`start(dense, sparse)` once the cost reports exist, `result()` for the PNG (None when
    nothing was pruned), `close()` to drop a drawing no one will take."""

    def __init__(self) -> None:
        self._data: tuple[list[str], list[float], list[float]] | None = None
        self._started = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._input: Path | None = None

    def start(self, dense: Any, sparse: Any) -> None:
        """Start drawing for these cost reports, unless a drawing was started already."""
        if self._started:
            return
        self._started = True
        self._data = sparsity_plot_data(dense, sparse)
        if self._data is None or "matplotlib.pyplot" in sys.modules:
            return
        try:  # a file, not a pipe: the worker reads only after its import, and a big model's
            fd, name = tempfile.mkstemp(prefix="sparsec-plot-", suffix=".json")  # names would fill a pipe
            self._input = Path(name)
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f)
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
                [sys.executable, str(WORKER), str(self._input)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        except OSError:
            self._proc = None

    def result(self) -> bytes | None:
        if self._data is None:
            self.close()
            return None
        png = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                out, _ = self._proc.communicate(timeout=WORKER_TIMEOUT_S)
                if self._proc.returncode == 0 and out.startswith(b"\x89PNG"):
                    png = out
        self.close()
        if png is None:
            from sparsec.figures import bytes_per_layer_png

            png = bytes_per_layer_png(*self._data)
        return png

    def close(self) -> None:
        """End the worker if it still runs and remove its input (a compile that failed, or a
        picture whose inputs changed: the never-slower fallback rebuilt the model)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._proc.communicate(timeout=10)
            self._proc = None
        if self._input is not None:
            self._input.unlink(missing_ok=True)
            self._input = None

    def restart(self, dense: Any, sparse: Any) -> None:
        """Drop what was started and draw for these reports instead."""
        self.close()
        self._started = False
        self.start(dense, sparse)


__all__ = ["BytesPlotJob"]
