"""Name-preserving clean-up of a freshly exported ONNX graph.

The torch exporter's own ``optimize=True`` breaks the link between initializers and
``state_dict`` keys that sparsec relies on (measured with torch 2.13 / onnxscript 0.7):

* BatchNorm is folded into the preceding Conv, and the folded weight keeps the Conv's
  name ("stem.0.weight") although its values no longer equal ``state_dict["stem.0.weight"]``;
* ``Transpose(W)`` of every Linear applied to a 3-D input is constant-folded into a new,
  anonymous initializer ("val_15"), so transformer weights lose their names.

So we export with ``optimize=False`` and run the same onnxscript optimizer passes here,
except that (1) no node reading a parameter is constant-folded and (2) the BatchNorm
fusion rules are left out. Every parameter initializer then keeps its name and its exact
``state_dict`` value; folding BatchNorm or pre-transposing weights is left to sparsec passes.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer, rewriter
from onnxscript.rewriter.rules import common as common_rules

# Node metadata the exporter writes that embeds absolute source paths and line numbers:
# it would make the file depend on the checkout location and on unrelated edits.
UNSTABLE_METADATA_KEYS = ("pkg.torch.onnx.stack_trace",)

_BATCHNORM_FUSIONS = (
    common_rules.fuse_batchnorm_into_conv_rule,
    common_rules.fuse_batchnorm_into_conv_transpose_rule,
    common_rules.fuse_batchnorm_into_gemm_rule,
)


def _rewrite_rules() -> list[rewriter.pattern.RewriteRule]:
    # onnxscript exposes no public "default rules minus X"; filter its default list by identity.
    return [r for r in rewriter._DEFAULT_REWRITE_RULES if r not in _BATCHNORM_FUSIONS]


def cleanup(model: ir.Model, param_names: Collection[str], iterations: int = 2) -> None:
    """Fold constants, apply simplification rules and drop dead nodes, in place."""
    params = frozenset(param_names)

    def should_fold(node: ir.Node) -> bool | None:
        if any(v is not None and v.name in params and v.is_initializer() for v in node.inputs):
            return False  # keep e.g. Transpose(W) so W stays a named, unmodified initializer
        return None  # onnxscript's default size-based decision

    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                optimizer._constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=optimizer._constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=optimizer._constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                    should_fold=should_fold,
                ),
                rewriter.RewritePass(_rewrite_rules()),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=iterations,
            early_stop=True,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    passes(model)
    strip_unstable_metadata(model)


def strip_unstable_metadata(model: ir.Model) -> None:
    for node in model.graph.all_nodes():
        for key in UNSTABLE_METADATA_KEYS:
            node.metadata_props.pop(key, None)
