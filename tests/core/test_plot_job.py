"""The per-layer bytes plot drawn by a worker process: the same PNG as drawn in process, and
a fallback in process whenever the worker cannot deliver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparsec import plot_job
from sparsec.figures import bytes_per_layer_png
from sparsec.plot_job import BytesPlotJob
from sparsec.report import sparsity_plot_data


def _reports() -> tuple[SimpleNamespace, SimpleNamespace]:
    layer = lambda name, nbytes, sparsity: SimpleNamespace(  # noqa: E731
        name=name, weight=f"{name}.weight", weight_bytes=nbytes, sparsity=sparsity
    )
    dense = SimpleNamespace(layers=[layer(f"encoder.layer{i}.fc", 4e6, "dense") for i in range(12)])
    sparse = SimpleNamespace(layers=[layer(f"encoder.layer{i}.fc", 2.2e6 if i % 3 else 4e6, "2:4" if i % 3 else "dense") for i in range(12)])
    return dense, sparse


def _job_with_worker(path: Path, code: str, monkeypatch: pytest.MonkeyPatch) -> BytesPlotJob:
    """A job started in a process without matplotlib, whose worker script is `code`."""
    path.write_text(code)
    monkeypatch.setattr(plot_job, "WORKER", path)
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    job = BytesPlotJob()
    job.start(*_reports())
    return job


def test_the_worker_draws_the_in_process_picture(tmp_path) -> None:
    data = sparsity_plot_data(*_reports())
    assert data is not None and data[0][0] == "encoder.layer0.fc"
    path = tmp_path / "plot.json"
    path.write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(plot_job.WORKER), str(path)], capture_output=True, check=True, timeout=120)
    assert out.stdout.startswith(b"\x89PNG") and out.stdout == bytes_per_layer_png(*data)
    assert "sparsec" not in out.stderr.decode()  # it imports figures.py alone, not the package


def test_the_job_draws_in_a_worker_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)  # a fresh CLI process
    job = BytesPlotJob()
    job.start(*_reports())
    assert job._proc is not None and job._input is not None
    made = job._input
    job.start(*_reports())  # started once
    png = job.result()
    assert png is not None and png == bytes_per_layer_png(*sparsity_plot_data(*_reports()))
    assert job._proc is None and not made.exists()


def test_a_failing_worker_falls_back_to_drawing_in_process(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job_with_worker(tmp_path / "broken.py", "import sys\nsys.exit(3)\n", monkeypatch)
    assert job._proc is not None
    assert job.result() == bytes_per_layer_png(*sparsity_plot_data(*_reports()))


def test_nothing_pruned_draws_nothing_and_close_ends_the_worker(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    dense, _ = _reports()
    job = BytesPlotJob()
    job.start(dense, dense)
    assert job.result() is None
    job = _job_with_worker(tmp_path / "slow.py", "import time\ntime.sleep(60)\n", monkeypatch)
    proc, made = job._proc, job._input
    assert proc is not None and isinstance(made, Path) and made.exists()
    job.close()  # a failed compile: the worker is killed, its input removed
    assert proc.returncode is not None and not made.exists()
