"""`lower-conv-nchwc`: sparse Conv layers onto the NCHWc kernel inside ONNX Runtime's NCHWc layout.

Runs after `legalize-dense` (pruned conv weights stored dense): ONNX Runtime lays the model out
(its NCHWc transformer and fusions, as it would at session creation), and each laid-out conv
sparse enough (N:M like 2:4, or unstructured to ~80%: on average at most 10 of 16 input channels
kept in the fullest output channel of a block) becomes the
`SparseConvNchwc` kernel op where it measured faster than the dense conv it replaces
(`backends/ort/nchwc_convs.py`). Before that, channels that only convs write and read, carried by
per-channel ops and residual adds (MobileNetV2's hidden channels and residual streams), are
permuted so that a block's lanes keep similar counts (`balance`, `backends/ort/lane_balance.py`;
exact). A depthwise conv whose output only such a 1x1 conv reads (MobileNet's inverted residual)
runs inside it where that measured faster (`fuse_depthwise`, backends/ort/nchwc_dw_fusion.py).
The artifact then holds ORT's `com.microsoft.nchwc` ops: it is
for this machine's ISA (AVX-512, NCHWc block 16), like the rest of a `--target=cpu` tuning.
Without the kernels or AVX-512, with no conv weight at least half zeros, or with tuning off
(fixed thresholds: no conv kernel), it changes nothing. `sparsec.torch` cannot apply such an
artifact to a module (ORT fused BatchNorm into the weights and renamed them); compile with
tuning off for that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass

MIN_ZERO_FRACTION = 0.5  # 2:4, 4:8, 1:4 or unstructured: at least half of a conv's weights zero


def _conv_weights(model: ir.Model) -> list[ir.Value]:
    """The constant 4-D weights of the model's standard Conv nodes."""
    out = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is not None and w.const_value is not None and len(w.const_value.shape) == 4:
            out.append(w)
    return out


@register_pass
@dataclass(frozen=True)
class LowerConvNchwc(Pass):
    name = "lower-conv-nchwc"
    summary = "Run sparse (N:M or unstructured) Conv layers on the SparseConvNchwc kernel inside ONNX Runtime's NCHWc layout (AVX-512)."
    exact = True

    measure: str = option("auto", "auto: keep a conv sparse only where it measured faster; all: every eligible conv")
    balance: bool = option(True, "permute channel groups that only convs write and read (through per-channel ops and "
                                 "residual adds) so that a kernel block's lanes keep similar counts (exact; "
                                 "backends/ort/lane_balance.py)")
    dense: tuple[str, ...] = option(
        (), "globs on conv weight names to run dense whatever was measured (the compile's never-slower fallback)"
    )
    fuse_depthwise: bool = option(True, "run a depthwise conv inside the sparse 1x1 conv that alone reads it, where "
                                        "that measured faster than the two ops (backends/ort/nchwc_dw_fusion.py)")

    def __post_init__(self) -> None:
        if self.measure not in ("auto", "all"):
            from sparsec.errors import OptionError

            raise OptionError(f"lower-conv-nchwc: measure must be auto or all, not {self.measure!r}")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from sparsec.backends.ort.nchwc_convs import lower_nchwc_convs, mask_key, nchwc_available

        weights = _conv_weights(model)
        if not any(np.mean(w.const_value.numpy() == 0) >= MIN_ZERO_FRACTION for w in weights):
            return PassResult(changed=False, stats={"convs_lowered": 0})
        if not ctx.tune:
            return PassResult(changed=False, stats={"convs_lowered": 0, "reason": "tuning is off (fixed thresholds)"})
        if not nchwc_available():
            return PassResult(changed=False, stats={"convs_lowered": 0, "reason": "needs the kernels and AVX-512"})
        from sparsec.backends.ort.lane_balance import balance_conv_lanes
        from sparsec.ir.io import model_bytes
        from sparsec.numerics import sample_inputs

        feeds = sample_inputs(model, dims=ctx.dims, seed=ctx.seed)
        # Permuted on a copy: if no conv ends up on the kernel, the model stays as it was.
        work = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        balanced = balance_conv_lanes(work) if self.balance else []
        for b in balanced:
            ctx.record(self.name, b["conv"], decision="channels permuted" if b["permuted"] else "channels kept",
                       readers=b["readers"], pairs_before=b["pairs_before"], pairs_after=b["pairs_after"])
        # ORT renames the weights it lays out; their zero patterns name the source convs.
        sources = {mask_key(w.const_value.numpy()): w.name for w in _conv_weights(work)}
        from sparsec.layers import matches_any

        keep_dense = {k for k, name in sources.items() if matches_any([name], self.dense)}
        measure = self.measure == "auto"
        low = lower_nchwc_convs(model_bytes(work), feeds, ctx.threads or 2, measure=measure,
                                fuse_depthwise=self.fuse_depthwise, keep_dense=keep_dense)
        for c in low.convs:
            weight = sources.get(c.mask_key)
            fused = {"depthwise_inside": c.depthwise, "depthwise_ms": c.depthwise_ms, "fused_ms": c.fused_ms}
            ctx.record(self.name, c.node, decision="kernel SparseConvNchwc" if c.sparse else "dense",
                       **({"weight": weight} if weight is not None else {}),
                       shape=c.shape, kept_of_16=c.k, dense_ms=c.dense_ms, sparse_ms=c.sparse_ms,
                       **(fused if c.depthwise else {}), **({"reason": c.reason} if c.reason else {}))
        stats = {"convs_lowered": low.lowered, "convs_candidates": len(low.convs), "skipped": low.skipped,
                 "depthwise_fused": low.depthwise_fused,
                 "measured": measure, "channel_paths_permuted": sum(b["permuted"] for b in balanced)}
        if not low.lowered:
            return PassResult(changed=False, stats=stats)
        laid_out = ir.serde.deserialize_model(onnx.load_from_string(low.model))
        model.graph = laid_out.graph  # its opset imports come along (a model's are its graph's)
        return PassResult(changed=True, stats=stats)
