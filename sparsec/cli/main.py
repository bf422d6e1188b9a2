"""`sparsec` entry point: argument parsing and the one-line error contract.

User errors (`SparsecError`) print `sparsec: error: ...` on one line and exit 2; nothing is
written. Unexpected exceptions are bugs: one line plus a hint, exit 1 (`--debug` shows the
traceback).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from sparsec import __version__
from sparsec.cli import commands
from sparsec.cli.common import (
    add_dims_arg,
    add_executor_arg,
    add_instrument_args,
    add_pipeline_args,
    setup_logging,
)
from sparsec.cli.tune_cmd import add_tune_parser
from sparsec.errors import InternalError, SparsecError
from sparsec.verdict import DEFAULT_MIN_COSINE, VERDICT_EXIT

EPILOG = """examples:
  sparsec compile --demo -o out/demo                 compile the embedded default model
  sparsec compile model.onnx --target=cpu --sparsity=2:4 -o out/
  sparsec opt model.onnx -p 'nm-sparsity{n=1 m=8}' -o sparse.onnx --print-ir-after-all
  sparsec inspect model.onnx                         per-layer MACs, bytes, predicted latency
  sparsec tune model.onnx                            time dense vs sparse kernels per layer shape here
  sparsec passes list                                every pass and its options
  sparsec pipeline show --sparsity=2:4               what the flags expand to

exit status:
  0  done (warnings, if any, were printed)
  1  internal error (a bug in sparsec; --debug shows the traceback)
  2  bad input or options, or the output cannot be written; nothing was written
  3  compile: the artifact was written, but failed its verdict (fidelity below --min-cosine,
     compiled slower than dense, or any warning under --strict); its manifest says why
  141  the reader of the output went away (e.g. `sparsec inspect m.onnx --json | head`)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"sparsec: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _add_global_flags(parser: argparse.ArgumentParser, verbose: object, flag: object) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=verbose, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", default=flag, help="print only errors")
    parser.add_argument("--debug", action="store_true", default=flag, help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparsec",
        description="A compiler for sparse neural networks: prune, lower and export models that run faster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sparsec {__version__}")
    _add_global_flags(parser, verbose=0, flag=False)
    # The same flags after a command (`sparsec compile m.onnx -q`); SUPPRESS keeps the values
    # given before the command when they are not repeated after it.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_flags(common, verbose=argparse.SUPPRESS, flag=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compile", parents=[common], help="optimise, lower and export a model to an artifact folder")
    p.add_argument("model", nargs="?", help="an .onnx file, or zoo:NAME for a models_zoo entry")
    p.add_argument("-o", "--output", required=True, type=Path, help="artifact folder to write")
    p.add_argument("--demo", action="store_true", help="compile the embedded default zoo model")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder that is not a sparsec artifact (its other files are kept)",
    )
    add_pipeline_args(p, sugar=True)
    add_dims_arg(p)
    p.add_argument("--threads", type=int, default=2, help="threads for measurements (default 2)")
    p.add_argument("--no-bench", action="store_true", help="skip the latency measurement (and the never-slower fallback)")
    p.add_argument(
        "--max-memory", metavar="SIZE",
        help="memory budget, e.g. 8G (default: half the machine's); bigger models run stage by stage",
    )
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="lower by fixed thresholds instead of per-layer measurements on this machine (sparsec tune)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip verification after each pass")
    add_executor_arg(p)
    v = p.add_argument_group("verdict")
    v.add_argument(
        "--min-cosine",
        type=float,
        metavar="COSINE",
        help=f"fail (exit {VERDICT_EXIT}) when the worst output cosine vs dense is below this (default "
        f"{DEFAULT_MIN_COSINE}; on random inputs rather than calibration samples the default only warns)",
    )
    v.add_argument("--strict", action="store_true", help=f"every warning fails the compile (exit {VERDICT_EXIT}), for CI")
    add_instrument_args(p)
    p.set_defaults(func=commands.cmd_compile)

    p = sub.add_parser("opt", parents=[common], help="run a pass pipeline on a model (IR to IR)")
    p.add_argument("model", help="input .onnx file")
    p.add_argument("-o", "--output", help="write the resulting model (with com.sparsec ops) here")
    add_pipeline_args(p, sugar=False)
    add_dims_arg(p)
    p.add_argument("--no-verify", action="store_true", help="skip verification after each pass")
    add_executor_arg(p)
    add_instrument_args(p)
    p.set_defaults(func=commands.cmd_opt)

    p = sub.add_parser("inspect", parents=[common], help="per-layer cost table of a model")
    p.add_argument(
        "model", help="an .onnx file (also one written by sparsec opt), an artifact folder, or zoo:NAME"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--ir", action="store_true", help="print the IR as text instead")
    p.add_argument("--target", default="cpu", help="target for predicted latency (default cpu)")
    add_dims_arg(p)
    p.set_defaults(func=commands.cmd_inspect)

    p = sub.add_parser("passes", parents=[common], help="list the registered passes")
    psub = p.add_subparsers(dest="passes_command", metavar="SUBCOMMAND", parser_class=_Parser)
    psub.required = True
    psub.add_parser("list", parents=[common], help="every pass with its options").set_defaults(func=commands.cmd_passes_list)

    p = sub.add_parser("pipeline", parents=[common], help="show what flags or a pipeline expand to")
    psub = p.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", parser_class=_Parser)
    psub.required = True
    show = psub.add_parser("show", parents=[common], help="print the pipeline with every default spelled out")
    add_pipeline_args(show, sugar=True)
    show.add_argument("--yaml", action="store_true", help="print as YAML")
    show.add_argument("--with-legalization", action="store_true", help="also print the backend's legalization")
    show.set_defaults(func=commands.cmd_pipeline_show)

    p = sub.add_parser("bench", parents=[common], help="benchmark dense vs compiled side by side; prints JSON")
    p.add_argument("model", help="an .onnx file, or zoo:NAME")
    add_pipeline_args(p, sugar=True)
    add_dims_arg(p)
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.set_defaults(func=commands.cmd_bench)

    add_tune_parser(sub)
    from sparsec.cli.finetune_cmd import add_finetune_parser

    add_finetune_parser(sub)

    p = sub.add_parser("zoo", parents=[common], help="reference models")
    zsub = p.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND", parser_class=_Parser)
    zsub.required = True
    zsub.add_parser("list", parents=[common], help="list zoo models").set_defaults(func=commands.cmd_zoo_list)
    ze = zsub.add_parser("export", parents=[common], help="export a zoo model to ONNX")
    ze.add_argument("name")
    ze.add_argument("-o", "--output", required=True)
    ze.set_defaults(func=commands.cmd_zoo_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    if getattr(args, "arch", None):
        # `--target=cuda --arch=sm_90` is the target `cuda:sm_90`; get_target validates it.
        args.target = f"{args.target}:{args.arch}"
    _terminate_cleanly()
    try:
        return int(args.func(args) or 0)
    except _Terminated:
        sys.stderr.write("sparsec: terminated\n")
        return 143  # 128 + SIGTERM
    except SparsecError as e:
        sys.stderr.write(f"sparsec: error: {e}\n")
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (`sparsec inspect --json | head`): not an error; stop quietly,
        # and keep Python from failing again when it flushes stdout at exit.
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a tool killed by the signal reports
    except KeyboardInterrupt:
        sys.stderr.write("sparsec: interrupted\n")
        return 130
    except Exception as e:  # a bug: keep the contract of one line unless asked for more
        if args.debug:
            raise
        logging.getLogger("sparsec").debug("internal error", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        kind = "" if isinstance(e, InternalError) else f"{type(e).__name__}: "  # its message names the cause
        sys.stderr.write(f"sparsec: internal error: {kind}{first} (rerun with --debug)\n")
        return 1


def entry() -> None:
    """The `sparsec` command: `main()`, then a quick exit.

    A compile leaves a heap of IR objects and weight arrays that interpreter shutdown would
    free one by one (0.3-0.4 s after a BERT-base compile) only for the process to end: the exit
    hooks run (staging and spill folders are removed, logs flushed), then the process exits
    without that teardown. Only when no other non-daemon Python thread is alive, whose work
    could be cut (daemon threads, such as tqdm's monitor, are cut by any exit)."""
    code = main()
    if any(t is not threading.current_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    # The work is done (or failed with its message): a SIGTERM now must not cut the hooks short
    # (they remove temporary folders) nor turn into an exception inside them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    atexit._run_exitfuncs()  # noqa: SLF001 - the hooks `sys.exit` would run, without the teardown
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)


class _Terminated(BaseException):
    """SIGTERM as an exception: `finally` blocks and atexit hooks run (temporary spill and
    staging folders are removed, a half-written artifact never replaces the old one)."""


def _terminate_cleanly() -> None:
    import signal
    import threading

    def handler(signum: int, frame: object) -> None:
        raise _Terminated()

    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, handler)


def _silence_stdout() -> None:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


if __name__ == "__main__":  # `python -m sparsec.cli.main ...` as well as `python -m sparsec.cli ...`
    raise SystemExit(main())
