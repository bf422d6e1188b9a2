"""`recover`: fine-tune the kept weights against the dense model (`sparsec.recover.finetune`).

Runs where it stands in the pipeline (after the compressing passes, before the backend's
lowering), with the model the pipeline started from as the teacher and the calibration data
as training set (a held-out part of it decides early stopping). Masks and N:M patterns are
kept exactly; the loss curve goes into the manifest's decisions and the report's
`recovery.png`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from sparsec.calib.stats import require_calibration
from sparsec.errors import PipelineError
from sparsec.pm.context import PassContext
from sparsec.pm.pass_base import Pass, PassResult, option
from sparsec.pm.registry import register_pass


@register_pass
@dataclass(frozen=True)
class Recover(Pass):
    name = "recover"
    summary = "Fine-tune kept weights with the dense model as teacher (output + per-layer feature distillation); masks kept."
    exact = False

    steps: int = option(200, "optimizer steps (at most)")
    lr: float = option(3e-5, "peak learning rate (AdamW, warm-up then cosine decay; MiniLM 2:4: 2e-4 made it worse)")
    batch_size: int = option(16, "samples per step (gradient accumulation for fixed-batch models)")
    feature_weight: float = option(1.0, "weight of the per-layer feature distillation (0: outputs only)")
    max_seconds: float = option(0.0, "stop after this many seconds (0: no limit)")
    eval_every: int = option(25, "steps between held-out evaluations (early stopping)")
    patience: int = option(4, "stop after this many evaluations without improvement")
    augment: bool = option(False, "also train on perturbed copies of the samples (token replacement, mixup)")
    augment_mode: str = option("replace", "token inputs: replace 15% of the tokens by the samples' (replace) or the vocabulary's (vocab), "
                                      "splice new rows from real spans (splice), or both (splice-vocab)")
    router_weight: float = option(0.0, "MoE routers: weight of distilling the logits towards the experts' activation mass")
    blockwise_epochs: float = option(0.0, "block-wise reconstruction first: epochs per transformer block (0: none)")
    blockwise_lr: float = option(1e-3, "block-wise reconstruction: peak learning rate")
    bf16: bool = option(False, "training steps under torch's bfloat16 autocast (faster on CPUs with AVX-512 BF16 or AMX)")

    def __post_init__(self) -> None:
        from sparsec.recover.augment import MODES

        if self.augment_mode not in MODES:
            raise PipelineError(f"pass 'recover': augment_mode must be one of {', '.join(MODES)}, got '{self.augment_mode}'")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise PipelineError("pass 'recover': steps, batch_size, eval_every and patience must be >= 1")
        if not self.lr > 0 or not self.blockwise_lr > 0 or min(self.feature_weight, self.max_seconds, self.router_weight, self.blockwise_epochs) < 0:
            raise PipelineError("pass 'recover': lr, blockwise_lr > 0 and feature_weight, max_seconds, router_weight, blockwise_epochs >= 0 are required")

    def options_for_finetune(self, threads: int = 2):  # noqa: ANN201  (FinetuneOptions)
        from sparsec.recover.finetune import FinetuneOptions

        return FinetuneOptions(
            steps=self.steps, lr=self.lr, batch_size=self.batch_size, feature_weight=self.feature_weight,
            max_seconds=self.max_seconds, eval_every=self.eval_every, patience=self.patience, threads=threads,
            augment=self.augment, augment_mode=self.augment_mode, router_weight=self.router_weight, blockwise_epochs=self.blockwise_epochs,
            blockwise_lr=self.blockwise_lr, bf16=self.bf16,
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from sparsec.recover.finetune import finetune

        calib = require_calibration(ctx, "pass 'recover'")
        teacher = ctx.dense_model
        if teacher is None:
            raise PipelineError("pass 'recover' needs the dense model as teacher (run it through a PassManager)")
        result = finetune(model, teacher, calib, self.options_for_finetune())
        record = result.to_dict()
        ctx.record(self.name, "model", decision="finetune", **record)
        stats = {k: record[k] for k in ("steps_run", "best_step", "stopped", "seconds", "cosine_before", "cosine_after", "params_trained")}
        stats["feature_points"] = len(result.feature_points)
        return PassResult(result.best_step > 0, stats)
