"""Executor specs, their one-line errors, and the local executor (no Ray needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sparsec.cli.main import main
from sparsec.errors import OptionError
from sparsec.executor import LocalExecutor, check_executor, make_executor, parse_executor
from sparsec.ir.io import save_model
from sparsec.testing import make_model, seeded


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("local", ("local", None)),
        ("ray", ("ray", None)),
        ("ray:auto", ("ray", "auto")),
        ("ray:10.0.0.5:6379", ("ray", "10.0.0.5:6379")),
        ("ray:ray://head:10001", ("ray", "ray://head:10001")),
    ],
)
def test_parse_executor(spec: str, parsed: tuple[str, str | None]) -> None:
    assert parse_executor(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown executor 'bogus' (known: local, ray, ray:ADDRESS)"),
        ("ray:", "needs an address after 'ray:'"),
        ("ray:host 6379", "bad Ray address 'host 6379'"),
        ("Local", "unknown executor 'Local'"),
    ],
)
def test_bad_spec_is_one_line_option_error(spec: str, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        make_executor(spec)
    assert "\n" not in str(info.value)


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(OptionError, match=r"--executor=ray needs Ray: pip install 'sparsec\[ray\]'"):
        check_executor("ray:auto")
    assert check_executor("local") == "local"
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(OptionError, match="needs Ray"):
        make_executor("ray")


def test_local_executor_keeps_task_order() -> None:
    ex = make_executor(None)
    assert isinstance(ex, LocalExecutor) and make_executor(ex) is ex
    assert ex.map(abs, [3, -1, -7, 2]) == [3, 1, 7, 2]
    assert ex.share([1, 2]).get() == [1, 2]


def test_local_path_imports_no_ray() -> None:
    code = (
        "import sys; import sparsec.cli.main, sparsec.compiler, sparsec.passes.analysis.sensitivity, "
        "sparsec.passes.sparsify.allocate; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _model(folder: Path) -> Path:
    text = """
<ir_version: 10, opset_import: ["" : 18]>
m (float[batch,64] x) => (float[batch,32] y) {
  y = MatMul(x, w)
}
"""
    path = folder / "m.onnx"
    save_model(make_model(text, w=seeded((64, 32), 1)), path)
    return path


@pytest.mark.parametrize("command", ["compile", "opt"])
def test_cli_bogus_executor(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    model = _model(tmp_path)
    out = tmp_path / "out"
    extra = ["--no-bench"] if command == "compile" else ["-p", "nm-sparsity"]
    rc = main([command, str(model), "-o", str(out), *extra, "--executor=bogus"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == ["sparsec: error: unknown executor 'bogus' (known: local, ray, ray:ADDRESS)"]
    assert not out.exists()


class _Recording(LocalExecutor):
    """A local executor that notes what it ran (any object with the interface will do)."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def map(self, fn, tasks, *, desc: str = "", progress: bool = False):  # noqa: ANN001, ANN201
        self.ran.append(fn.__name__)
        return super().map(fn, tasks, desc=desc, progress=progress)


def test_compile_options_executor_reaches_the_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from sparsec.calib.data import CalibrationData
    from sparsec.compiler import CompileOptions, compile_model
    from sparsec.pm import parse_pipeline

    text = """
<ir_version: 10, opset_import: ["" : 18]>
m (float[N,64] x) => (float[N,32] y) {
  h = MatMul(x, w1)
  y = MatMul(h, w2)
}
"""
    model = make_model(text, w1=seeded((64, 64), 1), w2=seeded((64, 32), 2))
    calib = CalibrationData({"x": np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)})
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path))  # no cached table from an earlier run
    executor = _Recording()
    options = CompileOptions(
        pipeline=parse_pipeline("layer-sensitivity{candidates=2:4 samples=8 criterion=magnitude}"), calibration=calib,
        bench=False, tune=False, executor=executor, held_out=4,
    )
    result = compile_model(model, options)
    assert executor.ran == ["_scan_layer"]
    assert result.manifest["executor"] == "local"  # the recording executor is a local one


def test_unreachable_ray_address_fails_fast() -> None:
    import socket

    from sparsec.executor.ray_executor import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(OptionError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
            check_reachable(address, f"ray:{address}")
    check_reachable("auto", "ray:auto")  # left to Ray
