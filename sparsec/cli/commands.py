"""The subcommands. Each takes parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sparsec.cli.common import (
    calibration_from_args,
    dims_from_args,
    instruments_from_args,
    pipeline_from_args,
)
from sparsec.errors import OptionError, OutputError

if TYPE_CHECKING:
    from sparsec.compiler import CompileOptions

log = logging.getLogger("sparsec")


def compile_options(args: argparse.Namespace) -> CompileOptions:
    """CompileOptions from the flags `compile` and `bench` share (bench has no --no-* flags)."""
    from sparsec.compiler import CompileOptions

    return CompileOptions(
        target=args.target,
        sparsity=args.sparsity,
        calibration=calibration_from_args(args),
        pipeline=pipeline_from_args(args, sugar=True),
        dims=dims_from_args(args),
        bench=not getattr(args, "no_bench", False),
        threads=args.threads,
        verify_each=not getattr(args, "no_verify", False),
        instruments=instruments_from_args(args) if hasattr(args, "pass_timing") else [],
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from sparsec.compiler import compile_file

    spec = args.model
    if args.demo:
        from sparsec.models_zoo import DEFAULT_MODEL

        spec = spec or f"zoo:{DEFAULT_MODEL}"
    if spec is None:
        raise OptionError("compile needs a MODEL (an .onnx file or zoo:NAME), or --demo")
    result = compile_file(spec, args.output, compile_options(args))
    m = result.manifest
    t, f, lat = m["totals"], m["fidelity"], m["latency"]
    print(f"artifact: {args.output}/ ({', '.join(m['files'])})")
    print(f"pipeline: {m['pipeline'] or '(none)'}")
    pruned = sum(1 for layer in m["layers"] if layer["sparsity"] != "dense")
    print(
        f"layers sparsified: {pruned}/{len(m['layers'])}; weights {t['weight_bytes_dense'] / 1e6:.2f} MB dense -> "
        f"{t['weight_bytes_sparse'] / 1e6:.2f} MB packed ({t['weight_bytes_dense'] / max(t['weight_bytes_sparse'], 1):.2f}x); "
        f"useful MACs {t['macs'] / max(t['effective_macs'], 1):.2f}x fewer"
    )
    print(f"fidelity vs dense: {f['summary']}, max abs error {f['max_abs']:.4g}")
    if lat.get("measured"):
        print(
            f"latency on {m['backend']} ({lat['threads']} threads): dense {lat['dense_ms']:.3f} ms, "
            f"compiled {lat['compiled_ms']:.3f} ms -> {lat['speedup']:.2f}x"
        )
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    from sparsec.ir.io import load_model, model_bytes
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager, default_repro_dir

    pipeline = pipeline_from_args(args, sugar=False)
    if pipeline is None:
        raise OptionError("opt needs a pipeline: -p PIPELINE or --pipeline-file FILE")
    out = Path(args.output) if args.output else None
    if out is not None:
        _check_file_writable(out)
    model = load_model(args.model)
    log.info("pipeline: %s", pipeline.to_text(full=True))
    ctx = PassContext(dims=dims_from_args(args), calibration=calibration_from_args(args), repro_dir=default_repro_dir())
    manager = PassManager(pipeline, verify_each=not args.no_verify, instruments=instruments_from_args(args))
    manager.run(model, ctx)
    if out is not None:
        _write_file_atomically(out, model_bytes(model))
        log.info("wrote %s", out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from sparsec.ir.io import load_model
    from sparsec.ir.printer import print_ir
    from sparsec.passes.analysis.cost_model import estimate_costs

    model = load_model(args.model)
    if args.ir:
        sys.stdout.write(print_ir(model))
        return 0
    report = estimate_costs(model, target=args.target, dims=dims_from_args(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
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
    return 0


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
        print(get_backend(get_target(args.target).backend).legalize_pipeline().to_text(full=True))
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

    _check_file_writable(Path(args.output))
    model, _ = load_any(f"zoo:{args.name}")
    _write_file_atomically(Path(args.output), model_bytes(model))
    print(args.output)
    return 0


def _check_file_writable(path: Path) -> None:
    parent = path.resolve().parent
    if path.is_dir():
        raise OutputError(f"output path {path} is a directory, expected a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} does not exist or is not writable")


def _write_file_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
