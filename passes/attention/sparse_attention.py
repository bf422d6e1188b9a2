"""`sparse-attention`: rewrite every attention block found to SparseAttention, with one static
layout for all heads or (`layout=auto`) a layout per head chosen from calibration data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from sparsec.dialect import DOMAIN
from sparsec.dialect.attention import ALL_BLOCKS, BlockLayout
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

    layout: str = option("local:256,sinks:4", "layout: local:TOKENS[,sinks:TOKENS][,topk:BLOCKS][,summary:1] or "
                         "dense (sizes round up to blocks; topk adds the BLOCKS key blocks of highest pooled "
                         "query-key score, chosen at run time; summary:1 reads every left-out key block as one "
                         "mean key); auto: per head from calibration data, under `density`")
    density: float = option(0.25, "with layout=auto: fraction of the block pairs (over all heads) to keep")
    topk: bool = option(True, "with layout=auto: candidates include run-time block top-k (topk:BLOCKS) per head")
    topk_score: str = option("mean", "the run-time top-k estimate: mean (pooled query sum . key block mean) or "
                             "softmax (the pooled query's softmax mass on each key block; sees single heavy keys)")
    summary: bool = option(False, "with layout=auto: candidates include summary keys (each left-out key block read "
                           "as its mean key and value, costing 1/block of a block pair)")
    check: str = option("output", "with layout=auto and topk: per attention block, keep top-k candidates only where "
                        "they beat static ones on the model's output (output: two runs per block; none)")
    check_samples: int = option(8, "check=output: calibration samples each run uses")
    block: int = option(64, "block size in tokens (queries and keys)")
    causal: str = option("auto", "auto (from the mask: constant, or evaluated on sample inputs), true or false")

    def __post_init__(self) -> None:
        if self.layout.strip().lower() != "auto":
            parse_layout(self.layout)  # bad text fails when the pipeline is parsed
        if not 0.0 < self.density <= 1.0:
            raise OptionError(f"sparse-attention: density must be in (0, 1], got {self.density}")
        if self.block < 1:
            raise OptionError(f"sparse-attention: block must be >= 1, got {self.block}")
        if self.topk_score not in ("mean", "softmax"):
            raise OptionError(f"sparse-attention: topk_score must be mean or softmax, got '{self.topk_score}'")
        if self.check not in ("output", "none"):
            raise OptionError(f"sparse-attention: check must be output or none, got '{self.check}'")
        if self.causal not in ("auto", "true", "false"):
            raise OptionError(f"sparse-attention: causal must be auto, true or false, got '{self.causal}'")

    @property
    def _score(self) -> int:
        return 1 if self.topk_score == "softmax" else 0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        from sparsec.ir.shapes import infer_concrete_shapes

        shapes = infer_concrete_shapes(model, ctx.dims)
        matches, misses = find_attention(model, shapes)
        sampled = self._sampled_masks(model, matches, ctx)
        decisions = {m.name: self._mask_decision(m, sampled) for m in matches}
        if self.layout.strip().lower() == "auto":
            per_head, auto_stats = self._auto_layouts(model, matches, decisions, ctx)
        else:
            spec = parse_layout(self.layout)
            local, sinks = spec.blocks(self.block)
            per_head = {m.name: ([local], [sinks], [spec.topk_blocks], None, None, [int(spec.summary)]) for m in matches}
            auto_stats = {}
        blocks = []
        for m in matches:
            causal, keep_bias, evidence = decisions[m.name]
            local_blocks, sink_blocks, topk_blocks, captured, errors, summary_blocks = per_head[m.name]
            layout = BlockLayout(self.block, causal, tuple(local_blocks), tuple(sink_blocks), None, tuple(topk_blocks),
                                 tuple(summary_blocks), self._score, float(m.scale))
            density = layout.density(m.heads if layout.heads() > 1 else 1, m.q_shape[2], m.seq_k)
            rewrite(model, m, block=self.block, local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal,
                    keep_bias=keep_bias, topk_blocks=topk_blocks, summary_blocks=summary_blocks, topk_score=self._score)
            info = {"block": m.name, "shape": m.summary(), "causal": causal, "mask": evidence,
                    "bias_kept": keep_bias, "local_blocks": _one_or_all(local_blocks),
                    "sink_blocks": _one_or_all(sink_blocks), "topk_blocks": _one_or_all(topk_blocks),
                    "summary_blocks": _one_or_all(summary_blocks), "density": round(density, 4)}
            if any(topk_blocks):
                info["topk_score"] = self.topk_score
            if captured is not None and errors is not None:
                info["captured_mass"] = [round(c, 4) for c in captured]
                info["head_error"] = [round(e, 5) for e in errors]
            blocks.append(info)
            topk_text = f" topk={_one_or_all(topk_blocks)}" if any(topk_blocks) else ""
            if any(summary_blocks):
                topk_text += f" summary={_one_or_all(summary_blocks)}"
            ctx.record(self.name, m.name, decision=f"SparseAttention block={self.block} "
                       f"local={_one_or_all(local_blocks)} sinks={_one_or_all(sink_blocks)}{topk_text} causal={int(causal)}",
                       density=round(density, 4), block=self.block, causal=causal, heads=m.heads,
                       query_len=m.q_shape[2], key_len=m.seq_k, local_blocks=list(local_blocks),
                       sink_blocks=list(sink_blocks), topk_blocks=list(topk_blocks), summary_blocks=list(summary_blocks),
                       **({k: info[k] for k in ("captured_mass", "head_error")} if captured else {}))
        if matches:
            model.opset_imports.setdefault(DOMAIN, 1)
            RemoveUnusedNodesPass()(model)
        stats = {"attention_blocks": len(matches), "rewritten": blocks, **auto_stats,
                 "missed": {x.name: f"{x.op}: {x.reason}" for x in misses}}
        return PassResult(changed=bool(matches), stats=stats)

    def _auto_layouts(self, model: ir.Model, matches: list[AttentionMatch], decisions: dict, ctx: PassContext
                      ) -> tuple[dict[str, tuple[list[int], list[int], list[int], list[float] | None,
                                             list[float] | None, list[int]]], dict]:
        """Per block: (local_blocks, sink_blocks, topk_blocks, captured mass, error, summary_blocks) per
        head, profiled on the calibration data and allocated under `density` over all heads."""
        from sparsec.calib.stats import require_calibration
        from sparsec.passes.attention.auto_layout import choose_layouts, static_only, uniform_window
        from sparsec.passes.attention.head_profile import profile_heads

        calib = require_calibration(ctx, "sparse-attention{layout=auto}")
        causal = {m.name: decisions[m.name][0] for m in matches}
        summary = {m.name: self.summary for m in matches}
        profiles, skipped = profile_heads(model, matches, calib, self.block, causal, executor=ctx.executor,
                                          topk=self.topk, summary=summary, topk_score=self._score)
        families: dict[str, dict] = {}
        if self.topk and self.check == "output" and profiles:
            # (Also rescaling each block's head errors by its measured output damage was tried:
            # MiniLM 0.9653 vs 0.9676 without, so the allocator keeps the profile's scale.)
            families = self._family_check(model, matches, decisions, profiles, calib, ctx)
            profiles = {n: (static_only(p) if families.get(n, {}).get("family") == "static" else p)
                        for n, p in profiles.items()}
        chosen = choose_layouts(profiles, self.density) if profiles else {}
        out: dict[str, tuple[list[int], list[int], list[int], list[float] | None, list[float] | None, list[int]]] = {}
        kept = total = 0
        for m in matches:
            heads = chosen.get(m.name)
            if heads is None:  # not profiled: stays dense, with the reason in the stats
                out[m.name] = ([ALL_BLOCKS], [0], [0], None, None, [0])
                continue
            out[m.name] = ([h.local for h in heads], [h.sinks for h in heads], [h.topk for h in heads],
                           [h.captured for h in heads],
                           [h.error for h in heads], [int(h.summary) for h in heads])
            kept += sum(h.kept_blocks for h in heads)
            total += sum(h.dense_blocks for h in heads)
        stats: dict = {"auto": {"density_budget": self.density, "density": round(kept / max(total, 1), 4),
                                "unprofiled": skipped, **({"family_check": families} if families else {})}}
        if profiles:
            stats["auto"]["uniform_baseline_local_blocks"] = uniform_window(profiles, self.density)
            heads = [h for layouts in chosen.values() for h in layouts]
            stats["auto"]["mean_captured_mass"] = round(float(np.mean([h.captured for h in heads])), 4)
            stats["auto"]["mean_head_error"] = round(float(np.mean([h.error for h in heads])), 5)
        return out, stats

    def _family_check(self, model: ir.Model, matches: list[AttentionMatch], decisions: dict, profiles: dict,
                      calib, ctx: PassContext) -> dict[str, dict]:  # noqa: ANN001
        """Per attention block: the model's output cosine with only that block sparse, laid out
        from static candidates alone vs with run-time top-k, both at `density`; the per-head
        output error can rank them the wrong way (MiniLM's last layer: top-k has half the head
        error of a window, yet costs the embedding 5x more)."""
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        from sparsec.calib.metrics import mean_cosine
        from sparsec.calib.runner import CalibrationRunner
        from sparsec.ir.shapes import infer_concrete_shapes
        from sparsec.passes.attention.auto_layout import choose_layouts, static_only

        head = calib.head(min(self.check_samples, calib.num_samples))
        reference = CalibrationRunner(model, head).outputs()
        rows = CalibrationRunner(model, head).output_rows()
        out: dict[str, dict] = {}
        for m in matches:
            prof = profiles.get(m.name)
            if prof is None:
                continue
            mixed = choose_layouts({m.name: prof}, self.density)[m.name]
            if not any(h.topk for h in mixed):
                out[m.name] = {"family": "static", "reason": "no head picks top-k at this density"}
                continue
            trials = {"static": choose_layouts({m.name: static_only(prof)}, self.density)[m.name], "topk": mixed}
            cosines = {}
            for label, heads in trials.items():
                trial = model.clone()  # shares the tensors; only the graph around this block changes
                found, _ = find_attention(trial, infer_concrete_shapes(trial, ctx.dims))
                tm = next(x for x in found if x.name == m.name)
                causal, keep_bias, _ = decisions[m.name]
                rewrite(trial, tm, block=self.block, local_blocks=[h.local for h in heads],
                        sink_blocks=[h.sinks for h in heads], causal=causal, keep_bias=keep_bias,
                        topk_blocks=[h.topk for h in heads], summary_blocks=[int(h.summary) for h in heads],
                        topk_score=self._score)
                trial.opset_imports.setdefault(DOMAIN, 1)
                RemoveUnusedNodesPass()(trial)
                cosines[label] = float(mean_cosine(reference, CalibrationRunner(trial, head).outputs(), rows))
            family = "topk" if cosines["topk"] > cosines["static"] else "static"
            out[m.name] = {"family": family, **{f"cosine_{k}": round(v, 6) for k, v in cosines.items()}}
            log.info("sparse-attention check %s: %s -> %s", m.name,
                     ", ".join(f"{k} {v:.5f}" for k, v in cosines.items()), family)
        return out

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
        # A mask computed from constants only is a constant, read on the sample run.
        constant = array is not None or not mask_analysis.depends_on_inputs(value)
        if array is None:
            array = sampled.get(value.name)
        if array is None:  # causal given by the user: keep the mask as it is
            return self.causal == "true", True, "dynamic"
        facts = mask_analysis.analyse(m, array, constant)
        causal = facts.causal if self.causal == "auto" else self.causal == "true"
        # A removable mask is exactly "causal" (or nothing): the op's own causal flag replaces it.
        keep = not (facts.removable and causal == facts.causal)
        return causal, keep, facts.evidence


def _one_or_all(values: list[int]) -> int | list[int]:
    """One value when every head has it (the manifest stays short), else the per-head list."""
    return values[0] if len(set(values)) == 1 else list(values)
