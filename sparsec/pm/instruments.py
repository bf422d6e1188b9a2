"""Pass instruments (MLIR's names): print IR, dump IR to a folder, timing and statistics.

An instrument observes the pass manager: `before_pass`, `after_pass`, `on_failure`,
`finish`. Output goes to the `sparsec.ir` / `sparsec.pm` loggers or to files.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import onnx_ir as ir

from sparsec.ir.printer import print_ir

if TYPE_CHECKING:
    from sparsec.pm.manager import PassRecord
    from sparsec.pm.pass_base import Pass


class Instrument:
    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None: ...
    def after_pass(self, index: int, p: Pass, model: ir.Model, record: PassRecord) -> None: ...
    def on_failure(self, index: int, p: Pass, model: ir.Model, error: Exception) -> None: ...
    def finish(self, records: list[PassRecord]) -> None: ...


class PrintIRAfter(Instrument):
    """`--print-ir-after=a,b` / `--print-ir-after-all`: the IR after the named passes."""

    def __init__(self, names: Collection[str] | None, stream: TextIO) -> None:
        self.names = None if names is None else set(names)
        self.stream = stream

    def after_pass(self, index: int, p: Pass, model: ir.Model, record: PassRecord) -> None:
        if self.names is None or p.name in self.names:
            self.stream.write(f"// ----- IR after {p.to_text()} ({'changed' if record.changed else 'unchanged'}) -----\n")
            self.stream.write(print_ir(model))
            self.stream.flush()


class IRDumpDir(Instrument):
    """`--ir-dump-dir=DIR`: `00_input.txt`, then `NN_<pass>.txt` after each pass."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._started = False

    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None:
        if not self._started:
            (self.directory / "00_input.txt").write_text(print_ir(model))
            self._started = True

    def after_pass(self, index: int, p: Pass, model: ir.Model, record: PassRecord) -> None:
        (self.directory / f"{index + 1:02d}_{p.name}.txt").write_text(
            f"// {p.to_text(full=True)}\n" + print_ir(model)
        )


class PassTiming(Instrument):
    """`--pass-timing`: wall time per pass, as a table when the run finishes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def finish(self, records: list[PassRecord]) -> None:
        total = sum(r.seconds for r in records) or 1e-12
        self.stream.write("===-- pass execution timing --===\n")
        self.stream.write(f"  {'wall (s)':>10}  {'share':>6}  pass\n")
        for r in records:
            self.stream.write(f"  {r.seconds:10.4f}  {100 * r.seconds / total:5.1f}%  {r.name}\n")
        self.stream.write(f"  {total:10.4f}  100.0%  total\n")


class PassStatistics(Instrument):
    """`--pass-statistics`: each pass's statistics (counts, errors of lossy passes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def finish(self, records: list[PassRecord]) -> None:
        self.stream.write("===-- pass statistics --===\n")
        for r in records:
            self.stream.write(f"{r.name} ({'changed' if r.changed else 'unchanged'})\n")
            if r.fidelity is not None:  # lossy passes: the error they made, vs their own input
                f = r.fidelity
                self.stream.write(
                    f"  error vs the pass's input (1 sample): cosine {f.worst_cosine:.6f}, max abs {f.max_abs:.4g}, "
                    f"rel L2 {f.rel_l2:.4g}\n"
                )
            for key, value in r.stats.items():
                if isinstance(value, (dict, list)):
                    continue
                self.stream.write(f"  {key}: {value}\n")


class LogProgress(Instrument):
    """Logs each pass as it starts and ends (the CLI's progress display)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.log = logging.getLogger("sparsec.pm")

    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None:
        self.log.info("[%d/%d] %s ...", index + 1, self.total, p.name)

    def after_pass(self, index: int, p: Pass, model: ir.Model, record: PassRecord) -> None:
        self.log.info("[%d/%d] %s done in %.2fs", index + 1, self.total, p.name, record.seconds)
