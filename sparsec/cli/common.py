"""Options shared by several subcommands: pipelines, instruments, dims, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from sparsec.errors import OptionError
from sparsec.pm.instruments import Instrument, PassStatistics, PassTiming, PrintIRAfter
from sparsec.pm.pipeline import Pipeline, parse_pipeline, pipeline_from_yaml
from sparsec.pm.presets import preset_pipeline


def add_executor_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor", default="local", metavar="local|ray[:ADDRESS]",
        help="where parallel work (sensitivity trials, attention head profiles, sparsegpt stages) runs: local (default, "
        "in process), ray (a local Ray instance) or "
        "ray:ADDRESS for a cluster (auto, HOST:6379, ray://HOST:10001); needs pip install 'sparsec[ray]'",
    )


def add_pipeline_args(p: argparse.ArgumentParser, *, sugar: bool) -> None:
    g = p.add_argument_group("pipeline")
    if sugar:
        g.add_argument("--target", default="cpu", help="target machine: cpu, cuda or arm64 (default: cpu)")
        g.add_argument("--backend", help="backend for the target (default: the target's own; --target=arm64: ort or tvm)")
        g.add_argument("--arch", help="target variant: for --target=cuda one of sm_80, sm_89, sm_90 (default sm_80)")
        g.add_argument(
            "--sparsity",
            help="N:M pattern for MatMul/Gemm/Conv weights, e.g. 2:4, 1:8, 4:8; unstructured as a percentage "
            "or fraction, e.g. 80%% or u:0.8; 'auto' to choose per layer "
            "from calibration data (see --min-fidelity, --calib); 'none' for dense (default: 2:4 when no "
            "other technique flag such as --crop is given)",
        )
    if sugar:
        g.add_argument(
            "--crop",
            type=float,
            metavar="FRACTION",
            help="crop channels to remove this fraction of MACs (e.g. 0.5); alone it gives a smaller dense "
            "model, with --sparsity the crop comes first",
        )
        g.add_argument(
            "--crop-ratio", type=float, metavar="FRACTION", help="like --crop, a fraction of every prunable group's channels"
        )
        g.add_argument(
            "--prune-all",
            action="store_true",
            default=None,
            help="prune every layer the pattern fits, also those the target runs no faster sparse (by default "
            "--target=cpu prunes only layers measured faster here), e.g. to ship N:M weights to another runtime",
        )
        g.add_argument(
            "--recover", metavar="SPEC",
            help="fine-tune after compressing, with the dense model as teacher (needs --calib), e.g. steps:200 or "
            "steps:200,lr:3e-4,seconds:600",
        )
        g.add_argument("--moe", metavar="SPEC", help="split FFNs into routed experts, e.g. experts:16,active:0.25[,k:per-layer] (moefy-ffn); auto (per-FFN top_k for --min-fidelity, needs --calib); slim MoE models: prune-experts:0.5 or merge-experts:0.5, and/or top-k:1")
        g.add_argument(
            "--criterion",
            choices=("magnitude", "wanda", "sparsegpt"),
            help="which weights to keep: magnitude (default), wanda or sparsegpt (reconstruction); the last two need --calib",
        )
        g.add_argument(
            "--min-fidelity",
            type=float,
            metavar="COSINE",
            help="with --sparsity=auto or --moe=auto: keep the mean output cosine vs dense at least this (default 0.99)",
        )
    if sugar:
        g.add_argument(
            "--attention",
            metavar="LAYOUT",
            help="rewrite attention blocks to block-sparse attention, e.g. local:256,sinks:4 (window and sink "
            "tokens, rounded up to 64-token blocks), topk:8 or local:64,topk:8 (plus the 8 key blocks of highest "
            "pooled query-key score per query block, chosen at run time), dense, or auto "
            "(a layout per head from the --calib data, static or top-k, keeping --density of the blocks)",
        )
        g.add_argument(
            "--density",
            type=float,
            metavar="FRACTION",
            help="with --attention=auto: fraction of the attention blocks to keep over all heads (default 0.25)",
        )
    g.add_argument(
        "--calib",
        metavar="FILE.npz",
        help="calibration samples: an .npz with one array per model input, samples on axis 0",
    )
    g.add_argument("-p", "--pipeline", help="pass pipeline text, e.g. 'nm-sparsity{n=2 m=4}'")
    g.add_argument("--pipeline-file", type=Path, help="pipeline as text or YAML (.yaml/.yml) file")


# Flags that choose what the pipeline does; -p/--pipeline-file spell the whole pipeline instead.
TECHNIQUE_FLAGS = (
    ("--sparsity", "sparsity"),
    ("--crop", "crop"),
    ("--crop-ratio", "crop_ratio"),
    ("--moe", "moe"),
    ("--recover", "recover"),
    ("--criterion", "criterion"),
    ("--min-fidelity", "min_fidelity"),
    ("--attention", "attention"),
    ("--density", "density"),
    ("--prune-all", "prune_all"),
)


def pipeline_from_args(args: argparse.Namespace, *, sugar: bool) -> Pipeline | None:
    if args.pipeline and args.pipeline_file:
        raise OptionError("give either -p/--pipeline or --pipeline-file, not both")
    given = [flag for flag, attr in TECHNIQUE_FLAGS if getattr(args, attr, None) is not None] if sugar else []
    if given and (args.pipeline is not None or args.pipeline_file is not None):
        which = "-p/--pipeline" if args.pipeline is not None else "--pipeline-file"
        raise OptionError(f"{which} spells the whole pipeline; it cannot be combined with {given[0]} (put it in the pipeline)")
    if args.pipeline is not None:
        return parse_pipeline(args.pipeline)
    if args.pipeline_file is not None:
        path: Path = args.pipeline_file
        if not path.is_file():
            raise OptionError(f"pipeline file {path}: no such file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            return pipeline_from_yaml(text)
        return parse_pipeline(" ".join(line for line in text.splitlines() if not line.strip().startswith("#")))
    if sugar:
        sparsity = args.sparsity
        if sparsity is None and args.crop is None and args.crop_ratio is None and args.moe is None:
            sparsity = "2:4"  # the default technique, only when no other one is asked for
        return preset_pipeline(
            target=args.target,
            sparsity=sparsity,
            crop=args.crop,
            crop_ratio=args.crop_ratio,
            criterion=args.criterion,
            min_fidelity=args.min_fidelity,
            attention=args.attention,
            density=args.density,
            moe=args.moe,
            prune_all=bool(args.prune_all),
            recover=getattr(args, "recover", None),
        )
    return None


def calibration_from_args(args: argparse.Namespace) -> Any:
    """The --calib data, loaded now so that a bad file fails before any work."""
    if getattr(args, "calib", None) is None:
        return None
    from sparsec.calib.data import CalibrationData

    return CalibrationData.load(args.calib)


def add_instrument_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instruments")
    g.add_argument("--print-ir-after", metavar="PASSES", help="print the IR after these passes (comma-separated)")
    g.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    g.add_argument("--ir-dump-dir", type=Path, metavar="DIR", help="write the IR before and after each pass to DIR")
    g.add_argument("--pass-timing", action="store_true", help="print the time taken by each pass")
    g.add_argument("--pass-statistics", action="store_true", help="print each pass's statistics")


def instruments_from_args(args: argparse.Namespace) -> list[Instrument]:
    out: list[Instrument] = []
    if args.print_ir_after_all:
        out.append(PrintIRAfter(None, sys.stdout))
    elif args.print_ir_after:
        out.append(PrintIRAfter([s.strip() for s in args.print_ir_after.split(",")], sys.stdout))
    if args.ir_dump_dir is not None:
        from sparsec.cli.dump_dir import OwnedIRDumpDir

        out.append(OwnedIRDumpDir(args.ir_dump_dir))
    if args.pass_timing:
        out.append(PassTiming(sys.stderr))
    if args.pass_statistics:
        out.append(PassStatistics(sys.stderr))
    return out


def add_dims_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value of a symbolic input dimension (e.g. --dim batch=8 --dim seq=128)",
    )


def dims_from_args(args: argparse.Namespace) -> dict[str, int]:
    dims = {}
    for item in args.dim:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise OptionError(f"--dim {item!r}: expected NAME=POSITIVE_INTEGER")
        dims[name] = int(value)
    return dims


def setup_logging(verbosity: int) -> None:
    """-1 (-q): errors only; 0: progress; 1+ (-v): debug."""
    level = logging.ERROR if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sparsec: %(message)s"))
    root = logging.getLogger("sparsec")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
