"""`sparsec finetune ARTIFACT --calib data.npz --steps N`: recover an artifact's accuracy.

The artifact's kernel ops are raised back to their `com.sparsec` markers (the weights
unpacked), the kept weights are fine-tuned with the dense model as teacher
(`sparsec.recover.finetune`; masks and N:M patterns kept), the backend's lowering runs
again, and the artifact is rewritten (or written to `-o`): `model.onnx`, the manifest's
`recovery` record, `recovery.png` and the report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import onnx_ir as ir

from sparsec.errors import InputError, OptionError, UnsupportedError
from sparsec.recover.augment import MODES as AUGMENT_MODES

log = logging.getLogger("sparsec")


def add_finetune_parser(sub: Any) -> None:
    p = sub.add_parser("finetune", help="fine-tune a compiled artifact against the dense model (recovery)")
    p.add_argument("artifact", type=Path, help="an artifact folder written by sparsec compile")
    p.add_argument("--calib", required=True, metavar="FILE.npz", help="training samples: one array per model input, samples on axis 0")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps at most (default 200)")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (default 3e-5)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    p.add_argument("--val", metavar="FILE.npz",
                   help="validation samples for early stopping, unseen by compression and training (default: a tenth of --calib)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop after this many seconds (default: no limit)")
    p.add_argument("--teacher", help="the dense model (.onnx or zoo:NAME; default: the artifact's recorded input, if unchanged)")
    p.add_argument("-o", "--output", type=Path, help="write the fine-tuned artifact here (default: in place)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--augment", action="store_true",
                   help="also train on perturbed copies of the samples (token replacement, mixup)")
    p.add_argument("--augment-mode", choices=AUGMENT_MODES, default="replace",
                   help="--augment for token inputs: replace 15%% of the tokens by the samples' (replace) or the vocabulary's (vocab), "
                        "splice new rows from real spans (splice), or both (splice-vocab)")
    p.add_argument("--router-weight", type=float, default=0.0,
                   help="MoE routers: weight of distilling their logits towards the experts' activation mass (default 0)")
    p.add_argument("--blockwise-epochs", type=float, default=0.0,
                   help="block-wise reconstruction first: epochs per transformer block (default 0: none)")
    p.add_argument("--blockwise-lr", type=float, default=1e-3, help="block-wise reconstruction: peak learning rate (default 1e-3)")
    p.add_argument("--bf16", action="store_true",
                   help="training steps under torch's bfloat16 autocast (faster on CPUs with AVX-512 BF16 or AMX; "
                        "weights, losses and validation stay float32)")
    p.set_defaults(func=cmd_finetune)


def _read_artifact(folder: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    manifest_path = folder / "manifest.json"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such artifact folder")
    if not manifest_path.is_file() or not (folder / "model.onnx").is_file():
        raise InputError(f"{folder}: not a sparsec artifact (needs manifest.json and model.onnx)")
    try:
        manifest = json.loads(manifest_path.read_text())
        names = list(manifest["files"])
        target = manifest["target"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{manifest_path}: not a sparsec manifest") from None
    if not isinstance(target, str):
        raise InputError(f"{manifest_path}: not a sparsec manifest")
    files = {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}
    return manifest, files


def _teacher(spec: str | None, manifest: dict[str, Any]) -> tuple[ir.Model, str]:
    from sparsec.capture import load_any

    if spec is not None:
        return load_any(spec)
    source = (manifest.get("input") or {}).get("source")
    digest = (manifest.get("input") or {}).get("sha256")
    if isinstance(source, str) and source.startswith("zoo:"):
        return load_any(source)
    if isinstance(source, str) and Path(source).is_file():
        if digest and hashlib.sha256(Path(source).read_bytes()).hexdigest() != digest:
            raise InputError(f"the artifact's input {source} changed since it was compiled: give the dense model with --teacher")
        return load_any(source)
    raise InputError("the artifact's dense input model is not at hand: give it with --teacher MODEL.onnx")


def cmd_finetune(args: argparse.Namespace) -> int:
    from sparsec.artifact import check_output_dir, json_bytes, write_artifact
    from sparsec.backends.base import get_backend
    from sparsec.calib.data import CalibrationData
    from sparsec.cli.kernel_view import raise_kernel_ops
    from sparsec.ir.io import load_model, model_bytes
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager
    from sparsec.recover.plot import recovery_plot
    from sparsec.report import render_report
    from sparsec.targets import get_target

    if args.threads < 1:
        raise OptionError(f"--threads={args.threads}: expected a positive count")
    manifest, files = _read_artifact(args.artifact)
    calib = CalibrationData.load(str(args.calib))
    student = load_model(args.artifact / "model.onnx", check_ops=False)
    if any(n.domain == "com.microsoft.nchwc" for n in student.graph):
        raise UnsupportedError(
            f"{args.artifact}: its convs were laid out by ONNX Runtime for this CPU (lower-conv-nchwc: NCHWc tensors, "
            "BatchNorm fused into the weights), which training cannot run; compile with --no-tune to fine-tune the artifact"
        )
    lowered_as: dict[str, str] = {}  # weight -> kernel variant, replayed by the lowering below
    raise_kernel_ops(student, lowered_as)
    calib.check_against(student)
    out = args.output or args.artifact
    check_output_dir(out)
    teacher, teacher_source = _teacher(args.teacher, manifest)
    calib.check_against(teacher)
    validation = CalibrationData.load(str(args.val)) if args.val else None
    # torch (~2 s to import) only once every input is known good: bad input fails fast.
    from sparsec.recover.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch_size, max_seconds=args.max_seconds,
                              threads=args.threads, augment=args.augment, augment_mode=args.augment_mode,
                              router_weight=args.router_weight, blockwise_epochs=args.blockwise_epochs,
                              blockwise_lr=args.blockwise_lr, bf16=args.bf16)
    result = finetune(student, teacher, calib, options, validation=validation)
    target = manifest["target"]
    backend = get_backend(get_target(target).backend)
    PassManager(backend.legalize_pipeline(), verify_numerics=False).run(student, PassContext(target=target, replay=lowered_as))
    record = {**result.to_dict(), "teacher": teacher_source, "calibration": f"{calib.num_samples} samples from {args.calib}",
              "options": {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "max_seconds": args.max_seconds,
                          "blockwise_epochs": args.blockwise_epochs, "validation": str(args.val) if args.val else None}}
    manifest["recovery"] = record
    manifest["decisions"] = [*manifest.get("decisions", []), {"pass": "recover", "layer": "model", "decision": "finetune", **record}]
    files["model.onnx"] = model_bytes(student)
    png = recovery_plot(record)
    if png is not None:
        files["recovery.png"] = png
        if "recovery.png" not in manifest["files"]:
            manifest["files"].append("recovery.png")
    with contextlib.suppress(KeyError, TypeError):  # an older manifest the report cannot render: keep its report
        files["report.md"] = render_report(manifest).encode()
    files["manifest.json"] = json_bytes(manifest)
    write_artifact(out, files)
    print(f"fine-tuned {args.artifact}: {result.steps_run} steps ({result.stopped}), best step {result.best_step}, "
          f"held-out cosine vs dense {result.cosine_before:.4f} -> {result.cosine_after:.4f}")
    print(f"artifact: {out}/")
    return 0
