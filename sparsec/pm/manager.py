"""The pass manager: runs a pipeline with verification after every pass."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from sparsec.calib.metrics import Fidelity, compare
from sparsec.errors import InputError, PassCrashed, SparsecError, VerificationError
from sparsec.ir.io import model_bytes, save_model
from sparsec.ir.printer import print_ir
from sparsec.numerics import evaluate, sample_inputs
from sparsec.pm.context import PassContext
from sparsec.pm.instruments import Instrument
from sparsec.pm.pass_base import Pass
from sparsec.pm.pipeline import Pipeline
from sparsec.verify import verify_model

EXACT_RTOL = 1e-4  # exact passes must keep outputs within this relative L2 error


@dataclass
class PassRecord:
    name: str
    text: str
    exact: bool
    changed: bool
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    fidelity: Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "pass": self.text,
            "exact": self.exact,
            "changed": self.changed,
            "seconds": round(self.seconds, 4),
            "stats": self.stats,
        }
        if self.fidelity is not None:
            d["fidelity"] = self.fidelity.to_dict()
        return d


class PassManager:
    """Runs passes in order on one model, in place.

    `verify_each` (on by default, like MLIR's -verify-each) runs the structural verifier
    before the pipeline and after every pass, plus each pass's own postconditions.
    `verify_numerics` compares outputs on sample inputs before and after each changing pass:
    exact passes must match, lossy passes get their error recorded as statistics.
    """

    def __init__(
        self,
        passes: Pipeline | Iterable[Pass],
        *,
        verify_each: bool = True,
        verify_numerics: bool = True,
        instruments: Sequence[Instrument] = (),
    ) -> None:
        self.pipeline = passes if isinstance(passes, Pipeline) else Pipeline(passes)
        self.verify_each = verify_each
        self.verify_numerics = verify_numerics
        self.instruments = list(instruments)

    def __str__(self) -> str:
        return str(self.pipeline)

    def run(self, model: ir.Model, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        if self.verify_each:
            problems = self._problems(model, ctx, None)
            if problems:
                raise self._error(problems, "input")
        if ctx.dense_model is None:  # a structural copy sharing tensors (passes replace tensors, never write into them)
            ctx.dense_model = model.clone()  # after the check: a broken graph cannot be cloned
        try:
            feeds = sample_inputs(model, dims=ctx.dims, seed=ctx.seed) if self.verify_numerics else None
            run_input = ctx.evaluate_input or (lambda f: evaluate(model, f))
            before = run_input(feeds) if feeds is not None and len(self.pipeline) else None
        except SparsecError:
            raise
        except Exception as e:  # ONNX Runtime refuses the input itself (types the checker lets by)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"the input model does not run on sample inputs: {first[:300]}") from None
        snapshot = None
        for index, p in enumerate(self.pipeline):
            for inst in self.instruments:
                inst.before_pass(index, p, model)
            # A structural copy sharing tensors: cheap (~30 ms on BERT-base), and passes replace
            # tensors rather than writing into them, so it still holds the input if the pass
            # fails. The last one still does after a pass that changed nothing.
            if ctx.repro_dir is not None and (snapshot is None or (records and records[-1].changed)):
                snapshot = model.clone()
            start = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except SparsecError:
                raise
            except Exception as e:  # a bug in the pass, not a verification failure: name it, keep a reproducer
                self._fail(index, p, model, snapshot, ctx, e)
                raise PassCrashed(p.name, e, self._repro_hint(ctx)) from e
            seconds = time.perf_counter() - start
            record = PassRecord(p.name, p.to_text(), p.exact, result.changed, seconds, dict(result.stats))
            if result.changed:
                ctx.analyses.invalidate(p.preserves)
                problems = self._problems(model, ctx, p) if self.verify_each else []
                if problems:
                    error = self._error(problems, p.name, hint=self._repro_hint(ctx))
                    self._fail(index, p, model, snapshot, ctx, error)
                    raise error
                if before is not None and feeds is not None:
                    after = ctx.evaluate_output(model, feeds, index) if ctx.evaluate_output else evaluate(model, feeds)
                    record.fidelity = compare(before, after)
                    if p.exact and record.fidelity.rel_l2 > EXACT_RTOL:
                        error = VerificationError(
                            f"exact pass changed the outputs (rel L2 error {record.fidelity.rel_l2:.3g} > "
                            f"{EXACT_RTOL}){self._repro_hint(ctx)}",
                            pass_name=p.name,
                        )
                        self._fail(index, p, model, snapshot, ctx, error)
                        raise error
                    before = after
            records.append(record)
            for inst in self.instruments:
                inst.after_pass(index, p, model, record)
        for inst in self.instruments:
            inst.finish(records)
        return records

    @staticmethod
    def _problems(model: ir.Model, ctx: PassContext, p: Pass | None) -> list[str]:
        problems = [str(x) for x in verify_model(model)]
        return problems + (p.verify(model, ctx) if p is not None else [])

    @staticmethod
    def _error(problems: list[str], pass_name: str, hint: str = "") -> VerificationError:
        first = problems[0]
        node = first.split("'")[1] if first.startswith("node '") else None
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return VerificationError(first + more + hint, pass_name=pass_name, node=node)

    def _fail(
        self, index: int, p: Pass, model: ir.Model, snapshot: ir.Model | None, ctx: PassContext, error: Exception
    ) -> None:
        for inst in self.instruments:
            inst.on_failure(index, p, model, error)
        if ctx.repro_dir is not None and snapshot is not None:
            write_reproducer(ctx.repro_dir, model_bytes(snapshot), Pipeline(self.pipeline.passes[index:]), model)

    @staticmethod
    def _repro_hint(ctx: PassContext) -> str:
        return f" (reproducer: {ctx.repro_dir})" if ctx.repro_dir is not None else ""


def write_reproducer(directory: Path, input_bytes: bytes, remaining: Pipeline, broken: ir.Model) -> Path:
    """Input model of the failing pass + the remaining pipeline with every default spelled out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "input.onnx").write_bytes(input_bytes)
    (directory / "pipeline.txt").write_text(remaining.to_text(full=True) + "\n")
    (directory / "ir_after_failure.txt").write_text(print_ir(broken))
    (directory / "README.txt").write_text(
        "Reproduce with:\n  sparsec opt input.onnx --pipeline-file pipeline.txt -o /tmp/out.onnx\n"
    )
    return directory


def default_repro_dir() -> Path:
    """A fresh path for a reproducer; the folder is only created if a pass fails."""
    return Path(tempfile.gettempdir()) / f"sparsec-repro-{time.strftime('%Y%m%d-%H%M%S')}-{id(object()):x}"


__all__ = ["PassManager", "PassRecord", "save_model", "write_reproducer"]
