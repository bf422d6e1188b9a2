"""User-facing errors.

Every error a user can cause derives from `SparsecError`; the CLI prints its message as one
line and exits with status 2. Anything else escaping to the CLI is a bug in sparsec
(`InternalError`, or any other exception): one line, exit status 1.
"""

from __future__ import annotations

# Characters that str.splitlines() breaks on, shown escaped so that a message stays one line
# whatever user text (a pass option, a node name, a file name) it quotes.
_LINE_BREAKS = {ch: repr(ch)[1:-1] for ch in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(message: str) -> str:
    """`message` with line breaks escaped (`\\n`)."""
    return message.translate(str.maketrans(_LINE_BREAKS))


class SparsecError(Exception):
    """An error caused by the input or the options, reported as one line."""

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(str(message)))


class InputError(SparsecError):
    """The input model file is missing, unreadable, not ONNX or unsupported."""


class PipelineError(SparsecError):
    """A pipeline string, pass name or pass option is invalid."""


class OptionError(SparsecError):
    """A command-line option value is invalid (for example `--sparsity=5:4`)."""


class UnsupportedError(SparsecError):
    """The model uses an opset, op or feature that the pipeline or backend cannot handle."""


class OutputError(SparsecError):
    """The output location cannot be written."""


class VerificationError(SparsecError):
    """The IR failed verification. `pass_name` and `node` say where."""

    def __init__(self, message: str, *, pass_name: str | None = None, node: str | None = None):
        self.pass_name = pass_name
        self.node = node
        where = []
        if pass_name:
            where.append(f"after pass '{pass_name}'")
        if node:
            where.append(f"at node '{node}'")
        prefix = ("verification failed " + " ".join(where) + ": ") if where else "verification failed: "
        super().__init__(prefix + message)


class InternalError(Exception):
    """A bug in sparsec, not in the input or the options (exit status 1, never 2)."""

    exit_code = 1


class PassCrashed(InternalError):
    """A pass raised an unexpected exception: a bug in that pass, not a verification failure.

    `pass_name` names the pass; the original exception is the `__cause__`.
    """

    def __init__(self, pass_name: str, error: BaseException, hint: str = ""):
        self.pass_name = pass_name
        super().__init__(f"pass '{pass_name}' crashed: {type(error).__name__}: {error}{hint}")


class ArtifactMismatchError(InputError):
    """An artifact applied to a module it was not compiled from (`sparsec.torch`)."""
