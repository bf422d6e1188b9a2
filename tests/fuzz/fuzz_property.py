"""The property every fuzz target checks: success, or one clean line of error.

Through the Python API a bad input must raise one of the documented user-facing errors
(`SparsecError`, or `PackedFormatError` for the kernels' packed formats) whose message is a
single non-empty line; anything else escaping is a bug. Through the CLI a bad input must
exit 2 with `sparsec: error: ...` as its only error line, no traceback, and leave no output
behind; success must leave a complete output.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparsec.errors import SparsecError
from sparsec.kernels import PackedFormatError

# Errors a user may see from the API; the kernels' format checks raise PackedFormatError.
CLEAN_ERRORS: tuple[type[BaseException], ...] = (SparsecError, PackedFormatError)
SPARSEC = Path(sys.executable).with_name("sparsec")


@dataclass(frozen=True)
class Outcome:
    """One case's result: `kind` is success, error (both fine) or fail (a bug, in `detail`)."""

    kind: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind == "fail"


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f" at {Path(last.filename).name}:{last.lineno}" if last else ""


def check_api(fn: Callable[[], object], clean: tuple[type[BaseException], ...] = CLEAN_ERRORS) -> Outcome:
    """Run `fn`; success, a clean one-line error, or a failure naming what escaped."""
    try:
        fn()
    except clean as e:
        msg = str(e)
        if not msg.strip() or "\n" in msg or "\r" in msg:
            return Outcome("fail", f"{type(e).__name__} message is not one line: {msg[:300]!r}")
        return Outcome("error", msg)
    except RecursionError as e:  # checked apart: its traceback is huge
        return Outcome("fail", f"RecursionError{_where(e)}")
    except Exception as e:
        return Outcome("fail", f"{type(e).__name__}{_where(e)}: {str(e)[:300]}")
    return Outcome("success")


def check_output(out: Path | None, ok: bool, complete: Sequence[str]) -> str | None:
    """None if `out` is complete after success and absent after an error."""
    if out is None:
        return None
    if not ok:
        return f"output {out.name} left behind after an error" if out.exists() else None
    if not out.exists():
        return f"output {out.name} missing after success"
    missing = [f for f in complete if not (out / f).is_file()]
    return f"output {out.name} lacks {missing} after success" if missing else None


def _judge_cli(rc: int, stderr: str, out: Path | None, complete: Sequence[str]) -> Outcome:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if "Traceback" in stderr:
        return Outcome("fail", f"traceback on stderr: {lines[-1][:300] if lines else ''}")
    if rc == 0:
        problem = check_output(out, True, complete)
        return Outcome("fail", problem) if problem else Outcome("success")
    # Log lines also start with "sparsec: "; the error contract is about the error lines.
    errors = [ln for ln in lines if ln.startswith(("sparsec: error:", "sparsec: internal error"))]
    if rc != 2 or len(errors) != 1 or not errors[0].startswith("sparsec: error: "):
        return Outcome("fail", f"exit {rc}: {(errors or lines or [''])[-1][:300]}")
    problem = check_output(out, False, complete)
    return Outcome("fail", problem) if problem else Outcome("error", errors[0])


def check_cli_inprocess(argv: Sequence[str], out: Path | None = None, complete: Sequence[str] = ()) -> Outcome:
    """`sparsec ARGV` through `sparsec.cli.main.main` in this process (cheap: no start-up)."""
    from sparsec.cli.main import main

    err, rc = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = int(main(list(argv)) or 0)
        except SystemExit as e:  # argparse's own errors
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001  (anything escaping main is the bug we look for)
            return Outcome("fail", f"{type(e).__name__} escaped main{_where(e)}: {str(e)[:300]}")
    return _judge_cli(rc, err.getvalue(), out, complete)


def check_cli(argv: Sequence[str], out: Path | None = None, complete: Sequence[str] = (), timeout: float = 300) -> Outcome:
    """`sparsec ARGV` as a subprocess: exit status, stderr and output folder judged."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(
            [str(SPARSEC), *argv], capture_output=True, text=True, timeout=timeout, env=env,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return Outcome("fail", f"timed out after {timeout} s")
    return _judge_cli(proc.returncode, proc.stderr, out, complete)
