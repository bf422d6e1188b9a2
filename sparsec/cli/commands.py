"""The subcommands. Each takes parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsec.cli.common import (
    calibration_from_args,
    dims_from_args,
    instruments_from_args,
    pipeline_from_args,
)
from sparsec.errors import OptionError
from sparsec.executor import check_executor, make_executor
from sparsec.output_files import check_file_writable, write_file_atomically

if TYPE_CHECKING:
    from sparsec.compiler import CompileOptions

log = logging.getLogger("sparsec")


def compile_options(args: argparse.Namespace) -> CompileOptions:
    """CompileOptions from the flags `compile` and `bench` share (bench has no --no-* flags)."""
    from sparsec.compiler import CompileOptions
    from sparsec.memory import parse_size

    return CompileOptions(
        target=args.target,
        backend=getattr(args, "backend", None),
        sparsity=args.sparsity,
        calibration=calibration_from_args(args),
        pipeline=pipeline_from_args(args, sugar=True),
        dims=dims_from_args(args),
        bench=not getattr(args, "no_bench", False),
        threads=args.threads,
        verify_each=not getattr(args, "no_verify", False),
        instruments=instruments_from_args(args) if hasattr(args, "pass_timing") else [],
        max_memory=parse_size(args.max_memory) if getattr(args, "max_memory", None) else None,
        prune_all=bool(getattr(args, "prune_all", None)),
        tune=not getattr(args, "no_tune", False),
        executor=check_executor(args.executor) if getattr(args, "executor", None) else None,
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from sparsec.compiler import compile_file
    from sparsec.verdict import VERDICT_EXIT

    spec = args.model
    if args.demo:
        from sparsec.models_zoo import DEFAULT_MODEL

        spec = spec or f"zoo:{DEFAULT_MODEL}"
    if spec is None:
        raise OptionError("compile needs a MODEL (an .onnx file or zoo:NAME), or --demo")
    if args.min_cosine is not None and not -1.0 <= args.min_cosine <= 1.0:
        raise OptionError(f"--min-cosine={args.min_cosine}: expected a cosine between -1 and 1 (e.g. 0.9)")
    options = compile_options(args)
    options.min_cosine, options.strict = args.min_cosine, args.strict
    result = compile_file(spec, args.output, options, force=args.force)
    verdict = result.verdict
    assert verdict is not None
    if not args.quiet:
        print(summary(result.manifest, spec, args.output))
        for text in verdict.warnings if not verdict.strict else []:
            log.warning("warning: %s", text)
    if verdict.status != "fail":
        return 0
    for text in verdict.failures:
        sys.stderr.write(f"sparsec: error: {text}\n")
    sys.stderr.write(
        f"sparsec: error: the artifact in {args.output} was written and its manifest marks it failed "
        f"(exit status {VERDICT_EXIT})\n"
    )
    return VERDICT_EXIT


def summary(m: dict, spec: str, out: Path) -> str:
    """The lines `compile` prints: what was done in words first, the verdict last."""
    t, f, lat = m["totals"], m["fidelity"], m["latency"]
    pruned = sum(1 for layer in m["layers"] if layer["sparsity"] not in ("dense", "removed"))
    lines = [
        f"compiled {spec}: {m['summary']}",
        f"artifact: {out}/ ({', '.join(m['files'])})",
        f"pipeline: {m['pipeline'] or '(none)'}",
        f"layers sparsified: {pruned}/{len(m['layers'])}; weights {t['weight_bytes_dense'] / 1e6:.2f} MB dense -> "
        f"{t['weight_bytes_sparse'] / 1e6:.2f} MB packed ({t['weight_bytes_dense'] / max(t['weight_bytes_sparse'], 1):.2f}x); "
        f"useful MACs {t['macs'] / max(t['effective_macs'], 1):.2f}x fewer",
        f"fidelity vs dense: {f['summary']}, max abs error {f['max_abs']:.4g}",
    ]
    if lat.get("measured"):
        lines.append(
            f"latency on {m['backend']} ({lat['threads']} threads): dense {lat['dense_ms']:.3f} ms, "
            f"compiled {lat['compiled_ms']:.3f} ms -> {lat['speedup']:.2f}x"
        )
    elif lat.get("reason"):
        lines.append(f"latency: {lat['reason']}")
    if m.get("memory"):
        mem = m["memory"]
        lines.append(
            f"memory: peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GB ({mem['mode']}, budget "
            f"{mem['max_memory_bytes'] / 2**30:.1f} GB)"
        )
    v = m["verdict"]
    if v["status"] == "ok":
        lines.append("verdict: ok")
    else:
        found = v["problems"] + v["warnings"]
        head = "FAILED" if v["status"] == "fail" else "ok with warnings"
        lines.append(f"verdict: {head}: " + "; ".join(found))
    return "\n".join(lines)


def cmd_opt(args: argparse.Namespace) -> int:
    from sparsec.ir.io import load_model, model_bytes
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager, default_repro_dir

    pipeline = pipeline_from_args(args, sugar=False)
    if pipeline is None:
        raise OptionError("opt needs a pipeline: -p PIPELINE or --pipeline-file FILE")
    out = Path(args.output) if args.output else None
    if out is not None:
        check_file_writable(out)
    from sparsec.input_dims import check_dims

    executor = make_executor(check_executor(args.executor))
    model = load_model(args.model)
    dims = dims_from_args(args)
    check_dims(model, dims)
    log.info("pipeline: %s", pipeline.to_text(full=True))
    ctx = PassContext(dims=dims, calibration=calibration_from_args(args), repro_dir=default_repro_dir(), executor=executor)
    manager = PassManager(pipeline, verify_each=not args.no_verify, instruments=instruments_from_args(args))
    try:
        manager.run(model, ctx)
    finally:
        executor.close()
    if out is not None:
        write_file_atomically(out, model_bytes(model))
        log.info("wrote %s", out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from sparsec.input_dims import check_dims
    from sparsec.ir.printer import print_ir
    from sparsec.passes.analysis.cost_model import estimate_costs

    model, kernel_ops = load_inspectable(args.model, raw=args.ir)
    check_dims(model, dims_from_args(args))
    if args.ir:
        sys.stdout.write(print_ir(model))
        return 0
    report = estimate_costs(model, target=args.target, dims=dims_from_args(args))
    attention = _attention_section(model, dims_from_args(args))
    from sparsec.cli.tune_cmd import artifact_lowering, lowering_lines

    lowering = artifact_lowering(args.model)
    if args.json:
        extra = {"lowering": lowering} if lowering else {}
        print(json.dumps({**report.to_dict(), "kernel_ops": kernel_ops, "attention": attention, **extra}, indent=2))
        return 0
    from sparsec.runtime import KERNEL_DOMAIN

    # Conv kernel ops stay in the graph as ONNX Runtime laid it out (lower-conv-nchwc): listed under lowering.
    conv_ops = sum(1 for node in model.graph if node.domain == KERNEL_DOMAIN)
    if kernel_ops - conv_ops:
        print(f"({kernel_ops - conv_ops} sparsec kernel ops are shown as the layers they implement, with their pattern)")
    if conv_ops:
        print(f"({conv_ops} sparse conv kernel ops run in ONNX Runtime's NCHWc layout: listed under lowering below)")
    header = f"{'layer':40} {'op':13} {'sparsity':8} {'MACs':>14} {'params':>11} {'weight B':>12} {'act B':>11} {'pred ms':>8}"
    print(header)
    print("-" * len(header))
    for c in report.layers:
        print(
            f"{c.name[:40]:40} {c.op_type:13} {c.sparsity:8} {c.macs:>14,} {c.params:>11,} {c.weight_bytes:>12,} "
            f"{c.activation_bytes:>11,} {c.predicted_ms:>8.3f}"
        )
    print("-" * len(header))
    tot = report.to_dict()["totals"]
    print(
        f"{'total':40} {'':13} {'':8} {tot['macs']:>14,} {tot['params']:>11,} {tot['weight_bytes']:>12,} "
        f"{tot['activation_bytes']:>11,} {tot['predicted_ms']:>8.3f}"
    )
    from sparsec.passes.attention.inspect import attention_lines

    for line in attention_lines(attention):
        print(line)
    for line in lowering_lines(lowering):
        print(line)
    return 0


def load_inspectable(spec: str, *, raw: bool = False) -> tuple[Any, int]:
    """Any model sparsec reads or writes: an .onnx file (with `com.sparsec` ops or kernel ops),
    an artifact folder, or zoo:NAME. Kernel ops are raised to the layers they implement unless
    `raw`; returns the model and how many kernel ops it holds."""
    from sparsec.backends.ort.nchwc_convs import NCHWC_DOMAIN
    from sparsec.capture import load_any
    from sparsec.cli.kernel_view import raise_kernel_ops
    from sparsec.errors import InputError
    from sparsec.ir.io import check_supported, load_model
    from sparsec.runtime import KERNEL_DOMAIN

    if spec.startswith("zoo:"):
        return load_any(spec)[0], 0
    path = Path(spec)
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise InputError(f"{path}: is a directory without model.onnx (not a sparsec artifact)")
        path = path / "model.onnx"
    model = load_model(path, check_ops=False)
    kernel_ops = sum(1 for node in model.graph if node.domain == KERNEL_DOMAIN)
    if raw:
        return model, kernel_ops
    raise_kernel_ops(model)
    # ONNX Runtime's NCHWc ops and the conv kernel ops in them (convs laid out by lower-conv-nchwc) stay as
    # the runtime runs them (every other kernel op was raised back above).
    check_supported(model, str(path), allow_domains=(NCHWC_DOMAIN, KERNEL_DOMAIN))
    return model, kernel_ops


def _attention_section(model, dims: dict[str, int]) -> dict:
    """Attention blocks found and missed (`passes/attention/inspect.py`)."""
    from sparsec.passes.attention.inspect import attention_summary

    return attention_summary(model, dims)


def cmd_passes_list(args: argparse.Namespace) -> int:
    from sparsec.pm.pipeline_text import format_value
    from sparsec.pm.registry import all_passes

    for name, cls in all_passes().items():
        kind = "exact" if cls.exact else "lossy"
        print(f"{name}  [{kind}]  {cls.summary}")
        for o in cls.options():
            print(f"    {o.name}={format_value(o.default)}  {o.help}")
    return 0


def cmd_pipeline_show(args: argparse.Namespace) -> int:
    from sparsec.backends.base import get_backend
    from sparsec.targets import get_target

    pipeline = pipeline_from_args(args, sugar=True)
    assert pipeline is not None
    if args.yaml:
        sys.stdout.write(pipeline.to_yaml(full=True))
        return 0
    print(pipeline.to_text(full=True))
    if args.with_legalization:
        print(get_backend(get_target(args.target).backend_for(getattr(args, "backend", None))).legalize_pipeline().to_text(full=True))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sparsec.capture import load_any
    from sparsec.compiler import compile_model

    options = compile_options(args)
    options.optimisation_pipeline()  # validate before the (slow) load
    model, source = load_any(args.model)
    result = compile_model(model, options, source=source)
    m = result.manifest
    out = {
        "model": source,
        "pipeline": m["pipeline"],
        "backend": m["backend"],
        "latency": m["latency"],
        "fidelity": m["fidelity"],
        "totals": m["totals"],
        "summary": m["summary"],
        "verdict": m["verdict"],
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from sparsec.models_zoo import DEFAULT_MODEL, ZOO

    for name, entry in ZOO.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{mark}: {entry.description}")
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from sparsec.capture import load_any
    from sparsec.ir.io import model_bytes

    check_file_writable(Path(args.output))
    model, _ = load_any(f"zoo:{args.name}")
    write_file_atomically(Path(args.output), model_bytes(model))
    print(args.output)
    return 0
