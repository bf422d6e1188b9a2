"""The compile driver: optimise, legalize for a backend, measure fidelity and speed, export."""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

import sparsec
from sparsec.artifact import MANIFEST, check_output_dir, json_bytes, write_artifact
from sparsec.attention_plot import attention_layout_plot
from sparsec.backends.base import CompiledModel, get_backend
from sparsec.bench import time_side_by_side
from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.calib.metrics import Fidelity, compare
from sparsec.calib.runner import output_rows, run_callable
from sparsec.errors import InputError, SparsecError, UnsupportedError
from sparsec.input_dims import check_dims
from sparsec.ir.io import model_bytes
from sparsec.ir.session_model import session_model
from sparsec.numerics import make_session, sample_inputs
from sparsec.passes.analysis.cost_model import CostReport, estimate_costs
from sparsec.passes.structural.crop_report import crop_plot
from sparsec.plots import quality_plots
from sparsec.pm.context import PassContext
from sparsec.pm.instruments import Instrument, LogProgress
from sparsec.pm.manager import PassManager, PassRecord, default_repro_dir
from sparsec.pm.pass_base import Pass
from sparsec.pm.pipeline import Pipeline
from sparsec.pm.presets import preset_pipeline
from sparsec.report import render_report, sparsity_plot
from sparsec.targets import get_target
from sparsec.verdict import Verdict, describe_pipeline, judge

log = logging.getLogger("sparsec")


@dataclass
class CompileOptions:
    target: str = "cpu"
    backend: str | None = None  # `--backend`: one of the target's backends (None: its default)
    sparsity: str | None = "2:4"
    calibration: Any = None  # CalibrationData, an .npz path or an iterable of feeds (data criteria, auto)
    criterion: str | None = None  # magnitude (default), wanda or sparsegpt for an N:M `sparsity`
    min_fidelity: float | None = None  # sparsity="auto": floor on the mean output cosine vs dense
    moe: str | None = None  # FFNs -> routed experts, e.g. "experts:16,active:0.25" (moefy-ffn)
    pipeline: Pipeline | None = None  # overrides the preset built from `sparsity`
    dims: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    fidelity_samples: int = 4  # random sample inputs, when no calibration data is given
    held_out: int = 32  # with calibration data: samples kept from the passes to measure fidelity on
    bench: bool = True
    threads: int = 2
    verify_each: bool = True
    instruments: Sequence[Instrument] = ()
    min_cosine: float | None = None  # verdict: floor on the worst output cosine (None: DEFAULT_MIN_COSINE)
    strict: bool = False  # verdict: every warning fails the compile

    def optimisation_pipeline(self) -> Pipeline:
        if self.pipeline is not None:
            return self.pipeline
        return preset_pipeline(
            target=self.target, sparsity=self.sparsity, criterion=self.criterion, min_fidelity=self.min_fidelity,
            moe=self.moe,
        )


@dataclass
class CompileResult:
    compiled: CompiledModel
    records: list[PassRecord]
    manifest: dict[str, Any]
    fidelity: Fidelity
    files: dict[str, bytes]
    verdict: Verdict | None = None

    @property
    def model(self) -> ir.Model:
        return self.compiled.model


def compile_model(
    model: ir.Model, options: CompileOptions | None = None, *, source: str = "<memory>", input_hash: str | None = None
) -> CompileResult:
    """Run the full compile on an IR model (modified in place) and build the artifact files."""
    options = options or CompileOptions()
    target = get_target(options.target)
    backend = get_backend(target.backend_for(options.backend))
    pipeline = options.optimisation_pipeline()
    legalize = backend.legalize_pipeline()
    check_dims(model, options.dims)
    dense_model = session_model(model)  # weights shared, not copied: passes replace tensors
    try:
        dense_session = make_session(dense_model, options.threads)  # also the pass manager's baseline
    except SparsecError:
        raise
    except Exception as e:  # ONNX Runtime refuses the input itself (types the checker lets by)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"the input model does not load in ONNX Runtime: {first[:300]}") from None
    dense_costs = estimate_costs(model, target=options.target, dims=options.dims)

    calibration, held = _hold_out(options, model)
    ctx = PassContext(
        target=options.target,
        dims=dict(options.dims),
        seed=options.seed,
        calibration=calibration,
        repro_dir=default_repro_dir(),
    )
    full = pipeline + legalize
    snapshot = _CostsBeforeLegalization(len(pipeline), options)
    instruments = [LogProgress(len(full)), snapshot, *options.instruments]
    records = PassManager(full, verify_each=options.verify_each, instruments=instruments).run(model, ctx)
    sparse_costs = snapshot.costs or estimate_costs(model, target=options.target, dims=options.dims)
    problems = backend.check(model)
    if problems:
        raise UnsupportedError(f"backend '{backend.name}' cannot run this model: {problems[0]}")
    compiled = CompiledModel(backend.name, model, runtime_ops=backend.runtime_ops(model))
    compiled.files.update(backend.extra_files(model, target))

    run_compiled = backend.runner(compiled, options.threads)
    fidelity, fidelity_info = _fidelity(model, dense_session, run_compiled, options, held)
    log.info("fidelity vs dense: %s", fidelity_info["summary"])

    latency: dict[str, Any] = {"measured": False}
    if options.bench and not target.measured_here:
        latency["reason"] = target.not_measured_reason
        log.info("latency: %s", target.not_measured_reason)
    elif options.bench:
        feeds = sample_inputs(model, dims=options.dims, seed=options.seed)
        timings = time_side_by_side(
            {"dense": lambda: dense_session.run(None, feeds), "compiled": lambda: run_compiled(feeds)},
            label="dense vs compiled",
        )
        d, c = timings["dense"], timings["compiled"]
        latency = {
            "measured": True,
            "dense_ms": round(d.median_ms, 4),
            "compiled_ms": round(c.median_ms, 4),
            "speedup": round(d.median_ms / c.median_ms, 4),
            "dense": d.to_dict(),
            "compiled": c.to_dict(),
            "threads": options.threads,
            "protocol": "dense vs compiled on ORT CPU, same process and threads, warm-up 3, blocked round-robin (blocks of 4 calls, first discarded), median",
            "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        }
        log.info(
            "latency: dense %.3f ms, compiled %.3f ms (%.2fx)", d.median_ms, c.median_ms, latency["speedup"]
        )

    compiled_bytes = model_bytes(model)
    manifest = _manifest(
        source, input_hash, options, pipeline, legalize, records, ctx, dense_costs, sparse_costs, fidelity_info, latency, compiled
    )
    # The verdict's floor is binding on real samples only; the fidelity measurement says which
    # inputs it used ("calibration" for held-out calibration samples).
    manifest["fidelity"].setdefault("inputs", "random")
    manifest.update(backend.manifest_entries(compiled))
    verdict = judge(
        manifest,
        changed=any(r.changed for r in records[: len(pipeline)]),
        requested=len(pipeline) > 0,
        min_cosine=options.min_cosine,
        real_samples=manifest["fidelity"]["inputs"] == "calibration",
        strict=options.strict,
    )
    manifest["summary"] = describe_pipeline(pipeline, options.target)
    manifest["verdict"] = verdict.to_dict()
    files = {"model.onnx": compiled_bytes, **compiled.files}
    manifest["files"].extend(compiled.files)
    plot = sparsity_plot(ctx.decisions, dense_costs, sparse_costs)
    if plot is not None:
        files["sparsity.png"] = plot
        manifest["files"].append("sparsity.png")
    for name, png in quality_plots(ctx.decisions).items():
        files[name] = png
        manifest["files"].append(name)
    crop = crop_plot(ctx.decisions)
    if crop is not None:
        files["crop.png"] = crop
        manifest["files"].append("crop.png")
    layouts = attention_layout_plot(ctx.decisions)
    if layouts is not None:
        files["attention_layouts.png"] = layouts
        manifest["files"].append("attention_layouts.png")
    files["report.md"] = render_report(manifest).encode()
    files[MANIFEST] = json_bytes(manifest)
    return CompileResult(compiled, records, manifest, fidelity, files, verdict)


class _CostsBeforeLegalization(Instrument):
    """Takes the cost model of the optimised IR, where sparse ops are still visible."""

    def __init__(self, first_legalization_index: int, options: CompileOptions) -> None:
        self.index = first_legalization_index
        self.options = options
        self.costs: CostReport | None = None

    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None:
        if index == self.index:
            self.costs = estimate_costs(model, target=self.options.target, dims=self.options.dims)


def _hold_out(options: CompileOptions, model: ir.Model) -> tuple[CalibrationData | None, CalibrationData | None]:
    """(data for the passes, held-out samples for the fidelity measurement). The last
    `held_out` samples (at most a quarter, in whole batches of the model's fixed batch size)
    are kept from every pass, so the manifest's fidelity is measured on data no decision saw."""
    if options.calibration is None:
        return None, None
    calib = CalibrationData.load(options.calibration)
    calib.check_against(model)  # a mismatch names the whole data set, before any split
    n, batch = calib.num_samples, model_batch_size(model) or 1
    count = min(options.held_out, n // 4) // batch * batch
    if count < batch or n - count < batch:
        return calib, None
    return calib.split((n - count) / n)


def _fidelity(
    model: ir.Model, dense_session: Any, run_compiled: Any, options: CompileOptions, held: CalibrationData | None
) -> tuple[Fidelity, dict[str, Any]]:
    """Compiled vs dense outputs: on held-out calibration samples when there are any, else on
    random sample inputs (which say little about real data; the manifest names which)."""
    if held is not None:
        held.check_against(model)
        dense = run_callable(lambda feeds: dense_session.run(None, feeds), held.batches_for(model))
        compiled = run_callable(run_compiled, held.batches_for(model))
        f = compare(dense, compiled, output_rows(held, held.batches_for(model), len(dense)))
        samples, data = held.samples_used(model), "held-out calibration samples"
    else:
        f = None
        for i in range(options.fidelity_samples):
            feeds = sample_inputs(model, dims=options.dims, seed=options.seed + 1 + i)
            one = compare(dense_session.run(None, feeds), run_compiled(feeds))
            f = one if f is None else f.worst_of(one)
        assert f is not None
        samples, data = options.fidelity_samples, "random sample inputs"
    summary = f"mean cosine {f.mean_cosine:.4f} (worst {f.worst_cosine:.4f}) on {samples} {data}"
    info = {**f.to_dict(), "metric": "mean_cosine", "samples": samples, "data": data, "summary": summary,
            "inputs": "calibration" if held is not None else "random", "reference": "dense input model on ORT CPU"}
    return f, info


def _manifest(
    source: str,
    input_hash: str | None,
    options: CompileOptions,
    pipeline: Pipeline,
    legalize: Pipeline,
    records: list[PassRecord],
    ctx: PassContext,
    dense_costs: Any,
    sparse_costs: Any,
    fidelity: dict[str, Any],
    latency: dict[str, Any],
    compiled: CompiledModel,
) -> dict[str, Any]:
    dense_t, sparse_t = dense_costs.to_dict()["totals"], sparse_costs.to_dict()["totals"]
    layers = []
    # Matched by layer name: a pass may remove layers (a layer gone counts as 0 MACs/bytes).
    after = {layer.name: layer for layer in sparse_costs.layers}
    for d in dense_costs.layers:
        s = after.get(d.name)
        layers.append(
            {
                "layer": d.name,
                "op_type": d.op_type,
                "weight": d.weight,
                "sparsity": s.sparsity if s is not None else "removed",
                "macs": d.macs,
                "effective_macs": s.effective_macs if s is not None else 0,
                "weight_bytes_dense": d.weight_bytes,
                "weight_bytes_sparse": s.weight_bytes if s is not None else 0,
            }
        )
    return {
        "sparsec_version": sparsec.__version__,
        "input": {"source": source, "sha256": input_hash},
        "target": options.target,
        "backend": compiled.backend,
        "pipeline": pipeline.to_text(full=True),
        "legalization": legalize.to_text(full=True),
        "passes": [r.to_dict() for r in records],
        "decisions": ctx.decisions,
        "warnings": [r.stats["warning"] for r in records if r.stats.get("warning")],
        "layers": layers,
        "totals": {
            "macs": dense_t["macs"],
            "effective_macs": sparse_t["effective_macs"],
            "params": dense_t["params"],
            "weight_bytes_dense": dense_t["weight_bytes"],
            "weight_bytes_sparse": sparse_t["weight_bytes"],
            "predicted_ms_dense": round(dense_t["predicted_ms"], 6),
            "predicted_ms_sparse": round(sparse_t["predicted_ms"], 6),
        },
        "fidelity": {
            **fidelity,
            **({"compiled": backend_note} if (backend_note := get_backend(compiled.backend).fidelity_note) else {}),
        },
        "latency": latency,
        "runtime_ops": compiled.runtime_ops,
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "files": ["model.onnx", "manifest.json", "report.md"],
    }


def compile_file(
    spec: str | Path, out_dir: str | Path, options: CompileOptions | None = None, *, force: bool = False
) -> CompileResult:
    """Load a model (`.onnx` path or `zoo:NAME`), compile it and write the artifact folder.

    The folder must be absent, empty or a sparsec artifact (`force`: any folder); only the
    artifact's own files are replaced (`sparsec.artifact`).
    """
    from sparsec.capture import load_any
    from sparsec.ir.io import model_hash

    out = Path(out_dir)
    check_output_dir(out, force=force)
    options = options or CompileOptions()
    options.optimisation_pipeline()  # validate options before the (slow) load
    # Before the (slow) load too: an unknown backend or a missing cross toolchain fails here.
    get_backend(get_target(options.target).backend_for(options.backend))
    model, source = load_any(str(spec))
    digest = model_hash(spec) if Path(str(spec)).is_file() else _ir_hash(model)
    result = compile_model(model, options, source=str(source), input_hash=digest)
    write_artifact(out, result.files, force=force)
    return result


def _ir_hash(model: ir.Model) -> str:
    import hashlib

    return hashlib.sha256(model_bytes(model)).hexdigest()


__all__ = ["CompileOptions", "CompileResult", "compile_file", "compile_model"]
