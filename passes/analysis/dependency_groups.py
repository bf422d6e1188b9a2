"""`dependency-groups`: coupled channel groups over the whole graph.

Rules per op (passes/structural/rules_*.py) link the indices of coupled axes; connected
components are channels, channels touching the same axes form a group (see
passes/structural/groups.py). Axes no rule understands are pinned with a reason, never
guessed. The work is a single pass over the nodes plus one connected-components call
(scipy), so it cannot loop and takes seconds on thousand-node graphs.
"""

from __future__ import annotations

import logging
import time

import onnx_ir as ir

from sparsec.ir.shapes import infer_concrete_shapes
from sparsec.passes.structural.groups import DependencyGraph, solve
from sparsec.passes.structural.trace import trace_couplings
from sparsec.pm.analysis import Analysis
from sparsec.pm.context import PassContext
from sparsec.targets import get_target

log = logging.getLogger("sparsec.dependency_groups")


def dependency_groups(
    model: ir.Model, *, dims: dict[str, int] | None = None, multiple: int = 16
) -> DependencyGraph:
    """Analyse `model`; channel counts of weight axes are to stay multiples of `multiple`."""
    start = time.perf_counter()
    shapes = infer_concrete_shapes(model, dims or {})
    builder = trace_couplings(model, shapes)
    graph = solve(builder, model, multiple)
    log.info(
        "dependency groups: %s in %.2f s", graph.summary(), time.perf_counter() - start
    )
    return graph


class DependencyGroups(Analysis):
    """Coupled channel groups of the model, with the target's channel multiple."""

    name = "dependency-groups"

    def compute(self, model: ir.Model, ctx: PassContext) -> DependencyGraph:
        return dependency_groups(model, dims=ctx.dims, multiple=get_target(ctx.target).channel_multiple)
