"""Option groups shared by the passes that prune layers: declared once, inherited by each.

- `LayerSelection`: which layers a pass may touch (`op_types`, `include`/`exclude` globs on
  layer or weight names, `min_params`); `ExpertLayerSelection` also MoE experts by default;
- `ReconstructionOptions`: how `sparsegpt` reconstructs (the fields of `Reconstruction`).
A pass lists them as bases: `class MyPass(LayerSelection, ReconstructionOptions, Pass)`; its
own options follow theirs in `passes list` and in pipeline text.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.layers import Layer, find_layers, matches_any
from sparsec.passes.sparsify.criteria import Reconstruction, reconstruction_option
from sparsec.pm.pass_base import option


@dataclass(frozen=True)
class LayerSelection:
    op_types: tuple[str, ...] = option(("MatMul", "Gemm", "Conv"), "op types to prune")
    include: tuple[str, ...] = option(("*",), "globs on layer or weight names to prune")
    exclude: tuple[str, ...] = option((), "globs on layer or weight names to leave dense")
    min_params: int = option(1024, "skip weights with fewer parameters")

    def selects(self, layer: Layer) -> bool:
        return self.selection_reason(layer) is None

    def selection_reason(self, layer: Layer) -> str | None:
        """Why the include/exclude globs leave a layer alone, or None when they select it.

        Recorded as the layer's decision, so an excluded layer is in the manifest with its reason.
        """
        names = (layer.name, layer.weight.name)
        if not matches_any(names, self.include):
            return f"not selected by include={list(self.include)}"
        glob = next((g for g in self.exclude if matches_any(names, (g,))), None)
        return None if glob is None else f"excluded by exclude glob '{glob}'"

    def selected_layers(self, model: ir.Model) -> list[Layer]:
        """The layers of `model` this pass may prune (before per-pattern skip reasons)."""
        return [layer for layer in find_layers(model, self.op_types) if self.selects(layer)]


@dataclass(frozen=True)
class ExpertLayerSelection(LayerSelection):
    """`LayerSelection` whose default op types also take the expert projections (w1, w2, w_up)
    of `com.sparsec.MoE` ops, each a layer `<node>/<projection>` (`sparsec.layers.moe_layers`)."""

    op_types: tuple[str, ...] = option(("MatMul", "Gemm", "Conv", "MoE"), "op types to prune (MoE: its experts' projections)")


@dataclass(frozen=True)
class ReconstructionOptions:
    damp: float = reconstruction_option("damp")
    correct: bool = reconstruction_option("correct")
    fit_bias: bool = reconstruction_option("fit_bias")
    refit_norms: bool = reconstruction_option("refit_norms")
    refit_kept: bool = reconstruction_option("refit_kept")
    residual: bool = reconstruction_option("residual")

    @property
    def reconstruction(self) -> Reconstruction:
        return Reconstruction.of(self)


__all__ = ["ExpertLayerSelection", "LayerSelection", "ReconstructionOptions"]
