"""`sparse-attention`: rewrite every attention block found to SparseAttention with a static layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import BlockLayout
from sparsec.errors import OptionError
from sparsec.passes.attention import mask_analysis
from sparsec.passes.attention.layout_spec import parse_layout
from sparsec.passes.attention.match import AttentionMatch, find_attention
from sparsec.passes.attention.rewrite import rewrite
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass

log = logging.getLogger("sparsec.passes.attention")


@register_pass
@dataclass(frozen=True)
class SparseAttentionPass(Pass):
    name = "sparse-attention"
    summary = "Rewrite attention blocks (MatMul-Softmax-MatMul) to com.sparsec.SparseAttention with a block layout."
    exact = False

    layout: str = option("local:256,sinks:4", "static layout: local:TOKENS[,sinks:TOKENS] or dense (sizes round up to blocks)")
    block: int = option(64, "block size in tokens (queries and keys)")
    causal: str = option("auto", "auto (from the mask: constant, or evaluated on sample inputs), true or false")

    def __post_init__(self) -> None:
        parse_layout(self.layout)  # bad text fails when the pipeline is parsed
        if self.block < 1:
            raise OptionError(f"sparse-attention: block must be >= 1, got {self.block}")
        if self.causal not in ("auto", "true", "false"):
            raise OptionError(f"sparse-attention: causal must be auto, true or false, got '{self.causal}'")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        from sparsec.ir.shapes import infer_concrete_shapes

        spec = parse_layout(self.layout)
        local, sinks = spec.blocks(self.block)
        shapes = infer_concrete_shapes(model, ctx.dims)
        matches, misses = find_attention(model, shapes)
        sampled = self._sampled_masks(model, matches, ctx)
        blocks = []
        for m in matches:
            causal, keep_bias, evidence = self._mask_decision(m, sampled)
            layout = BlockLayout(self.block, causal, (local,), (sinks,))
            density = layout.density(1, m.q_shape[2], m.seq_k)
            rewrite(model, m, block=self.block, local_blocks=[local], sink_blocks=[sinks], causal=causal,
                    keep_bias=keep_bias)
            info = {"block": m.name, "shape": m.summary(), "causal": causal, "mask": evidence,
                    "bias_kept": keep_bias, "local_blocks": local, "sink_blocks": sinks,
                    "density": round(density, 4)}
            blocks.append(info)
            ctx.record(self.name, m.name, decision=f"SparseAttention block={self.block} local={local} "
                       f"sinks={sinks} causal={int(causal)}", density=round(density, 4))
        if matches:
            model.opset_imports.setdefault(DOMAIN, 1)
            RemoveUnusedNodesPass()(model)
        stats = {"attention_blocks": len(matches), "rewritten": blocks,
                 "missed": {x.name: f"{x.op}: {x.reason}" for x in misses}}
        return PassResult(changed=bool(matches), stats=stats)

    def _sampled_masks(self, model: ir.Model, matches: list[AttentionMatch], ctx: PassContext) -> dict:
        dynamic = []
        for m in matches:
            value = mask_analysis.mask_value(m)
            if value is not None and mask_analysis.constant_array(value) is None:
                dynamic.append(value)
        if not dynamic or self.causal != "auto":
            return {}
        return mask_analysis.sample_values(model, dynamic, ctx.dims, ctx.seed)

    def _mask_decision(self, m: AttentionMatch, sampled: dict) -> tuple[bool, bool, str]:
        """(causal, keep the bias input, how the mask was read)."""
        value = mask_analysis.mask_value(m)
        if value is None:
            return self.causal == "true", False, "none"
        array = mask_analysis.constant_array(value)
        constant = array is not None
        if array is None:
            array = sampled.get(value.name)
        if array is None:  # causal given by the user: keep the mask as it is
            return self.causal == "true", True, "dynamic"
        facts = mask_analysis.analyse(m, array, constant)
        causal = facts.causal if self.causal == "auto" else self.causal == "true"
        # A removable mask is exactly "causal" (or nothing): the op's own causal flag replaces it.
        keep = not (facts.removable and causal == facts.causal)
        return causal, keep, facts.evidence
