"""`sparsec tune MODEL`: time, on this machine, dense ONNX Runtime against every kernel variant
for each distinct layer shape of a model, and cache the answers (what `compile` then uses)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sparsec.errors import OptionError


def add_tune_parser(sub: Any) -> None:
    from sparsec.cli.common import add_dims_arg

    p = sub.add_parser(
        "tune",
        help="measure dense vs sparse kernels per layer shape on this machine (cached; compile uses it)",
    )
    p.add_argument("model", help="an .onnx file, or zoo:NAME; with --backend=tvm a TVM artifact folder")
    p.add_argument("--backend", choices=("ort", "tvm"), default="ort",
                   help="ort (default): dense vs sparse kernels per layer shape; tvm: MetaSchedule search on a "
                   "TVM artifact's dense functions, stored in the artifact and applied to its model.so")
    p.add_argument("--trials", type=int, metavar="N",
                   help="--backend=tvm: MetaSchedule trials in all (a whole model wants thousands: hours on 2 cores)")
    p.add_argument("--sparsity", default="2:4", help="N:M pattern to tune for (default 2:4)")
    p.add_argument("--threads", type=int, default=2, help="threads the model will run with (default 2)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="measuring time per shape (default 1; $SPARSEC_TUNE_BUDGET_S)")
    p.add_argument("--retune", action="store_true", help="measure again even where the cache has an answer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_dims_arg(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    if args.backend == "tvm":
        return cmd_tune_tvm(args)
    if args.trials is not None:
        raise OptionError("--trials applies to --backend=tvm only")
    from sparsec.cli.common import dims_from_args
    from sparsec.nm_pattern import parse_nm

    pattern = parse_nm(args.sparsity)  # one-line OptionError on bad text
    if pattern.n >= pattern.m:
        raise OptionError(f"--sparsity={args.sparsity}: a dense pattern has nothing to tune")
    if not 1 <= args.threads <= 256:
        raise OptionError(f"--threads={args.threads}: expected 1 to 256")
    if args.budget is not None and not 0.0 < args.budget <= 600.0:
        raise OptionError(f"--budget={args.budget}: expected seconds per shape between 0 and 600")
    dims = dims_from_args(args)

    from sparsec.capture import load_any
    from sparsec.input_dims import check_dims
    from sparsec.layers import find_layers
    from sparsec.passes.sparsify.nm_sparsity import skip_reason
    from sparsec.pm.context import PassContext
    from sparsec.tune import Tuner, plan_layers

    model, source = load_any(args.model)
    check_dims(model, dims)
    ctx = PassContext(dims=dims, threads=args.threads)
    ctx.tuner = Tuner(threads=args.threads, budget_s=args.budget)
    if args.retune:
        ctx.tuner.cache.forget()
    layers = [lay for lay in find_layers(model, ("MatMul", "Gemm", "Conv"))
              if skip_reason(lay, pattern.n, pattern.m, 1024) is None]
    plan = plan_layers(model, layers, pattern.n, pattern.m, ctx)
    rows = []
    for lay in layers:
        info = ctx.measured.get(lay.weight.name, {"reason": plan.get(lay.weight.name, "")})
        rows.append({"layer": lay.name, "weight": lay.weight.name, **info})
    result = {"model": str(source), "pattern": f"{pattern.n}:{pattern.m}", "threads": args.threads,
              "cache": str(ctx.tuner.cache.path), "signature": ctx.tuner.cache.signature,
              "shapes_measured": ctx.tuner.measured, "layers": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{source}: {len(layers)} layers prunable to {pattern.n}:{pattern.m}, {ctx.tuner.measured} shape(s) "
          f"measured now, cache {ctx.tuner.cache.path}")
    print(f"{'layer':40} {'shape':44} {'dense us':>9} {'sparse us':>9}  choice")
    for r in rows:
        dense = f"{r['dense_us']:.1f}" if r.get("dense_us") is not None else "-"
        sparse = f"{r['sparse_us']:.1f}" if r.get("sparse_us") is not None else "-"
        print(f"{r['layer'][:40]:40} {r.get('shape', '-')[:44]:44} {dense:>9} {sparse:>9}  "
              f"{r.get('variant', 'dense')}{' (cached)' if r.get('cached') else ''}: {r.get('reason', '')}")
    return 0


def cmd_tune_tvm(args: argparse.Namespace) -> int:
    """MetaSchedule on a `--backend=tvm` artifact (backends/tvm/tuning.py)."""
    from pathlib import Path

    if args.trials is None or not 1 <= args.trials <= 1_000_000:
        raise OptionError(f"--backend=tvm needs --trials N with N from 1 to 1000000 (got {args.trials})")
    if not 1 <= args.threads <= 256:
        raise OptionError(f"--threads={args.threads}: expected 1 to 256")
    folder = Path(args.model)
    manifest = folder / "manifest.json"
    try:
        backend = json.loads(manifest.read_text()).get("backend") if manifest.is_file() else None
    except (OSError, ValueError):
        backend = None
    if backend != "tvm":
        what = f"a '{backend}' artifact" if backend else "not an artifact folder"
        raise OptionError(f"--backend=tvm tunes a TVM artifact (sparsec compile --backend=tvm -o DIR); {args.model} is {what}")
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise OptionError("--backend=tvm: apache-tvm is not installed (pip install 'sparsec[tvm]')") from None
    from sparsec.backends.tvm.tuning import tune_artifact

    result = tune_artifact(folder, args.trials, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{folder}: {result['trials']} trial(s) over {result['tasks']} task(s), {result['records']} record(s); "
          f"{result['functions_from_database']} function(s) now use the tuned schedule; latency "
          f"{result['latency_ms_before']:.4f} ms -> {result['latency_ms_after']:.4f} ms (load {result['loadavg'][0]})")
    return 0


def artifact_lowering(spec: str) -> dict[str, Any] | None:
    """The per-layer lowering choices of an artifact folder's manifest (None for other inputs)."""
    from pathlib import Path

    manifest = Path(spec) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("lowering")
    except (OSError, ValueError):
        return None


def lowering_lines(lowering: dict[str, Any] | None) -> list[str]:
    """`sparsec inspect ARTIFACT`: how each layer runs on the target and why (measured times)."""
    if not lowering or not lowering.get("layers"):
        return []
    lines = ["", f"lowering ({lowering['choices']}): {lowering['sparse_kernel_layers']} layer(s) on sparse "
             f"kernels, {lowering['dense_layers']} dense"]
    for e in lowering["layers"]:
        times = ""
        if e.get("dense_us") is not None and e.get("sparse_us") is not None:
            times = f" dense {e['dense_us']:.1f} us vs sparse {e['sparse_us']:.1f} us;"
        lines.append(f"  {str(e.get('layer') or e['weight'])[:40]:40} {e['runs']:24}{times} {e.get('reason', '')}")
    moved = lowering.get("never_slower", {}).get("moved_to_dense", [])
    if moved:
        lines.append(f"  never slower: {len(moved)} layer(s) moved back to dense after the end-to-end check")
    return lines
