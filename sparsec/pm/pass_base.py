"""The `Pass` base class: a frozen dataclass whose fields are its typed options."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import onnx_ir as ir

from sparsec.pm.analysis import Analysis  # noqa: TC001  (get_type_hints needs it at run time)

if TYPE_CHECKING:
    from sparsec.pm.context import PassContext


def option(default: Any, help: str) -> Any:  # noqa: A002  (mirrors argparse's name)
    """Declare a pass option: a dataclass field with a default and a help text."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PassResult:
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class Pass:
    """A transformation or analysis-driven rewrite of an `ir.Model`, in place.

    Subclasses set `name` (kebab-case), `summary`, `exact` (False for lossy passes, whose
    numeric error the pass manager reports), `requires`/`preserves` (analysis classes), and
    implement `run`. `verify` checks the pass's postconditions on the result.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    requires: ClassVar[tuple[type[Analysis], ...]] = ()
    preserves: ClassVar[tuple[type[Analysis], ...]] = ()

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def verify(self, model: ir.Model, ctx: PassContext) -> list[str]:
        """Postconditions; returns problems (empty when the result is as promised)."""
        return []

    @classmethod
    def options(cls) -> list[OptionInfo]:
        from sparsec.pm.context import PassContext

        hints = typing.get_type_hints(cls, localns={"PassContext": PassContext})
        # The pass's own options first, then those of shared option groups it inherits
        # (dataclasses would list the inherited ones first).
        own = set(vars(cls).get("__annotations__", {}))
        fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)
        infos = []
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else None
            infos.append(OptionInfo(f.name, hints[f.name], default, f.metadata.get("help", "")))
        return infos

    def option_values(self, *, include_defaults: bool) -> dict[str, Any]:
        values = {}
        for info in self.options():
            value = getattr(self, info.name)
            if include_defaults or value != info.default:
                values[info.name] = value
        return values

    def to_text(self, *, full: bool = False) -> str:
        from sparsec.pm.pipeline_text import format_value

        values = self.option_values(include_defaults=full)
        if not values:
            return self.name
        body = " ".join(f"{k}={format_value(v)}" for k, v in values.items())
        return f"{self.name}{{{body}}}"

    def __str__(self) -> str:
        return self.to_text()
