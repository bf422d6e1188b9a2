"""Analyses: computed lazily on first request, cached until a pass invalidates them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import onnx_ir as ir

if TYPE_CHECKING:
    from sparsec.pm.context import PassContext


class Analysis:
    """Computes a read-only fact about a model. Subclasses implement `compute`."""

    name: ClassVar[str] = ""

    def compute(self, model: ir.Model, ctx: PassContext) -> Any:
        raise NotImplementedError


class AnalysisManager:
    def __init__(self) -> None:
        self._cache: dict[type[Analysis], Any] = {}
        self.computed: list[str] = []  # names, in order, for statistics and tests

    def get(self, analysis: type[Analysis], model: ir.Model, ctx: PassContext) -> Any:
        if analysis not in self._cache:
            self._cache[analysis] = analysis().compute(model, ctx)
            self.computed.append(analysis.name or analysis.__name__)
        return self._cache[analysis]

    def is_cached(self, analysis: type[Analysis]) -> bool:
        return analysis in self._cache

    def invalidate(self, preserved: tuple[type[Analysis], ...] = ()) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in preserved}
