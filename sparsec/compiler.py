"""The compile driver: optimise, legalize for a backend, measure fidelity and speed, export."""

from __future__ import annotations

import atexit
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import sparsec
from sparsec.artifact import MANIFEST, check_output_dir, json_bytes, write_artifact
from sparsec.attention_plot import attention_layout_plot
from sparsec.backends.base import CompiledModel, get_backend
from sparsec.calib.compiled_share import SharedCompiledRun
from sparsec.calib.data import CalibrationData, model_batch_size
from sparsec.calib.dense_share import SharedDenseRun
from sparsec.calib.metrics import Fidelity, compare
from sparsec.calib.runner import output_rows, run_callable
from sparsec.dialect import DOMAIN
from sparsec.errors import UnsupportedError
from sparsec.executor import make_executor
from sparsec.input_dims import check_dims
from sparsec.ir.file_tensor import SpillStore, mapped_reads, spilling, spilling_active, weight_bytes
from sparsec.ir.io import EXTERNAL_DATA_BYTES, model_bytes, write_model
from sparsec.ir.program import same_model, same_program
from sparsec.ir.session import session_from_ir
from sparsec.latency import measure_latency
from sparsec.memory import (
    Budget,
    budget_scope,
    fmt_bytes,
    lean_stage_bytes,
    peak_rss_bytes,
    small_pages,
    tune_malloc,
)
from sparsec.moe_plot import moe_usage_plot
from sparsec.never_slower import (
    fallback_words,
    kernel_layers_by_gain,
    lowering_summary,
    with_dense_layers,
)
from sparsec.numerics import NUMERICS_THREADS, sample_inputs
from sparsec.passes.analysis.cost_model import CostReport, estimate_costs
from sparsec.passes.structural.crop_report import crop_plot
from sparsec.plot_job import BytesPlotJob
from sparsec.plots import quality_plots
from sparsec.pm.context import PassContext
from sparsec.pm.instruments import Instrument, LogProgress
from sparsec.pm.manager import PassManager, PassRecord, default_repro_dir
from sparsec.pm.pass_base import Pass
from sparsec.pm.pipeline import Pipeline
from sparsec.pm.presets import preset_pipeline
from sparsec.recover.plot import recovery_plot
from sparsec.report import render_report
from sparsec.targets import get_target
from sparsec.verdict import Verdict, describe_pipeline, judge

log = logging.getLogger("sparsec")

# Models above max(SPILL_MODEL_BYTES, budget / SPILL_BUDGET_DIVISOR) of weights spill rewritten
# weights of SPILL_TENSOR_BYTES or more. Below a sixteenth of the budget the copies fit easily and
# the disk round trip only costs time (BERT-base, 435 MB under a 12 GB budget: ~1 s of a 9 s compile).
SPILL_MODEL_BYTES = 64 << 20
SPILL_BUDGET_DIVISOR = 16
SPILL_TENSOR_BYTES = 1 << 20


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
    max_memory: int | None = None  # bytes; None: a share of the machine (sparsec.memory.default_budget)
    prune_all: bool = False  # prune layers the target runs no faster sparse too (preset without only_faster)
    tune: bool = True  # lowering from per-machine measurements (sparsec.tune); False: fixed thresholds
    executor: Any = None  # where sensitivity trials run: "local" (None), "ray", "ray:ADDRESS" or an Executor

    def optimisation_pipeline(self) -> Pipeline:
        if self.pipeline is not None:
            return self.pipeline
        return preset_pipeline(
            target=self.target, sparsity=self.sparsity, criterion=self.criterion, min_fidelity=self.min_fidelity,
            moe=self.moe, prune_all=self.prune_all,
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
    model: ir.Model, options: CompileOptions | None = None, *, source: str = "<memory>",
    input_hash: str | Future[str] | None = None,
) -> CompileResult:
    """Run the full compile on an IR model (modified in place, unless the never-slower
    fallback rebuilds it from a copy) and build the artifact files."""
    options = options or CompileOptions()
    tune_malloc()
    budget = Budget(options.max_memory)
    streaming = budget.streams(weight_bytes(model))
    # Rewritten weights go to a spill file (written once, read back on demand) whenever the
    # model is big enough for copies to matter; smaller models stay entirely in memory.
    spill_above = max(SPILL_MODEL_BYTES, budget.bytes // SPILL_BUDGET_DIVISOR)
    store = SpillStore(threshold=SPILL_TENSOR_BYTES) if streaming or weight_bytes(model) > spill_above else None
    if store is not None:
        atexit.register(store.close)  # the compiled model's rewritten weights live there until written
    if streaming:
        log.info(
            "memory: %s of weights > %s (a quarter of the %s budget): streaming stage by stage, rewritten "
            "weights spilled to %s", fmt_bytes(weight_bytes(model)), fmt_bytes(budget.whole_model_bytes),
            fmt_bytes(budget.bytes), store.folder,
        )
    executor = make_executor(options.executor)  # Ray, if asked for, connects on first use
    plot = BytesPlotJob()
    try:
        with budget_scope(budget), spilling(store), mapped_reads(not streaming), small_pages():
            return _compile(model, replace(options, executor=executor), source, input_hash, budget, streaming, store, plot)
    finally:
        plot.close()
        if executor is not options.executor:  # made here: release what it started
            executor.close()


def _compile(
    model: ir.Model, options: CompileOptions, source: str, input_hash: str | Future[str] | None, budget: Budget, streaming: bool,
    store: SpillStore | None, plot_job: BytesPlotJob,
) -> CompileResult:
    target = get_target(options.target)
    backend = get_backend(target.backend_for(options.backend))
    pipeline = options.optimisation_pipeline()
    legalize = backend.legalize_pipeline()
    if not options.tune:
        log.info("tuning is off: layers are lowered by fixed thresholds, not by measurements on this machine")
    check_dims(model, options.dims)
    dense_weight_bytes = weight_bytes(model)
    # A structural copy sharing the weights: passes replace tensors, never write into them.
    # It is the dense reference, and what the never-slower fallback rebuilds from.
    dense_model = model.clone()
    dense_costs = estimate_costs(model, target=options.target, dims=options.dims)

    calibration, held = _hold_out(options, model)
    stage_bytes = lean_stage_bytes(budget, dense_weight_bytes)
    staged = backend.name == "ort" and stage_bytes is not None and (streaming or not options.bench)
    shared = _shared_dense_run(dense_model, options, stage_bytes) if staged and held is None else None
    # The last check and the fidelity run share one run where neither is the latency run's.
    shared_out = _shared_compiled_run(model, options, len(pipeline)) if held is None and not options.bench else None
    build = _build(
        model, pipeline, legalize, options, backend, target, calibration, evaluate_input=shared, evaluate_output=shared_out,
        # Not beside a latency measurement: a drawing process would share its cores.
        on_sparse_costs=None if options.bench else lambda costs: plot_job.start(dense_costs, costs),
    )
    first_build = build

    latency: dict[str, Any] = {"measured": False}
    fallback: dict[str, Any] = {}
    dense_bytes: bytes | None = None
    if options.bench and streaming and staged:
        latency["reason"] = (
            f"not measured: the model's {fmt_bytes(dense_weight_bytes)} of weights cannot be loaded whole within "
            f"the memory budget ({fmt_bytes(budget.bytes)}, --max-memory)"
        )
        log.info("latency: %s", latency["reason"])
    elif options.bench and not target.measured_here:
        latency["reason"] = target.not_measured_reason
        log.info("latency: %s", target.not_measured_reason)
    elif options.bench:
        feeds = sample_inputs(model, dims=options.dims, seed=options.seed)
        dense_bytes = model_bytes(dense_model)
        latency = _latency(dense_bytes, build, feeds, options)
        if not latency["faster"]:
            build, latency, fallback = _never_slower(
                dense_model, pipeline, legalize, options, backend, target, calibration, build, latency, dense_bytes, feeds
            )
    model, ctx, records, compiled = build.model, build.ctx, build.records, build.compiled
    sparse_costs = build.sparse_costs

    if staged:  # each model run stage by stage: neither is ever whole in memory
        run_dense = shared.fidelity if shared is not None else _staged_runner(dense_model, stage_bytes, options.threads)
        run_compiled = _staged_runner(model, stage_bytes, options.threads)
    elif options.bench:  # both sessions were built for the latency run anyway
        dense_session = session_from_ir(dense_model, options.threads)
        run_dense = _batched(lambda feeds: dense_session.run(None, feeds))
        run_compiled = _batched(backend.runner(compiled, options.threads))
    else:  # one session alive at a time, without pre-packed weight copies (they only buy speed)
        run_dense = _one_at_a_time(lambda: (lambda s: lambda feeds: s.run(None, feeds))(session_from_ir(dense_model, options.threads, lean=True)))
        run_compiled = _one_at_a_time(lambda: backend.runner(compiled, options.threads))
    if shared_out is not None:
        run_compiled = _kept_first(shared_out, [r.changed for r in records], run_compiled)
    # The per-layer bytes plot started drawing when the optimised model's costs were known
    # (sparsec.plot_job); the never-slower fallback's rebuild has other costs, another picture.
    if build is not first_build:
        plot_job.restart(dense_costs, sparse_costs)
    plot_job.start(dense_costs, sparse_costs)  # no legalization step: not started yet
    # Another backend (TVM, GPU) runs even an unchanged model on its own numerics: checked.
    unchanged = backend.name == "ort" and same_model(model, dense_model)
    fidelity, fidelity_info = _fidelity(model, run_dense, run_compiled, options, held, unchanged=unchanged)
    plot = plot_job.result()
    if staged:
        fidelity_info["execution"] = "stage by stage (" + ("model above the memory budget)" if streaming else "a lean check: no latency run)")
    log.info("fidelity vs dense: %s", fidelity_info["summary"])
    if latency.get("measured") and dense_bytes is not None:
        # Nothing changed (no layer runs faster here, so none was pruned): the artifact is the
        # input model and any measured difference is noise.
        # Known unchanged: no need to serialize the whole model to compare its bytes.
        latency["identical_to_dense"] = unchanged or model_bytes(model) == dense_bytes
        # Only weight values differ (every layer on dense ops): the same work as dense.
        latency["same_program_as_dense"] = latency["identical_to_dense"] or same_program(model, dense_model)

    external = streaming or weight_bytes(model) > EXTERNAL_DATA_BYTES
    staging = Path(tempfile.mkdtemp(prefix="sparsec-model-"))
    atexit.register(shutil.rmtree, staging, True)
    written = write_model(model, staging / "model.onnx", external=external)
    manifest = _manifest(
        source, input_hash, options, build.pipeline, build.legalize, records, ctx, dense_costs, sparse_costs,
        fidelity_info, latency, compiled
    )
    if latency.get("measured"):  # sparsec.runtime.InferenceSession runs the artifact with these
        manifest["runtime_settings"] = latency["compiled_settings"]
    manifest["lowering"] = lowering_summary(ctx, records, tuned=ctx.tune, fallback=fallback)
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
    manifest["summary"] = describe_pipeline(pipeline, options.target) + fallback_words(fallback)
    manifest["verdict"] = verdict.to_dict()
    files: dict[str, Any] = {p.name: (p.read_bytes() if p.suffix == ".onnx" else p) for p in written}
    files.update(compiled.files)
    manifest["files"].extend(p.name for p in written if p.name != "model.onnx")
    manifest["files"].extend(compiled.files)
    if plot is not None:
        files["sparsity.png"] = plot
        manifest["files"].append("sparsity.png")
    for name, png in quality_plots(ctx.decisions).items():
        files[name] = png
        manifest["files"].append(name)
    recovery = next((d for d in ctx.decisions if d.get("pass") == "recover"), None)
    png = recovery_plot(recovery) if recovery is not None else None
    if png is not None:
        files["recovery.png"] = png
        manifest["files"].append("recovery.png")
    crop = crop_plot(ctx.decisions)
    if crop is not None:
        files["crop.png"] = crop
        manifest["files"].append("crop.png")
    usage = moe_usage_plot(ctx.decisions)
    if usage is not None:
        files["moe_usage.png"] = usage
        manifest["files"].append("moe_usage.png")
    layouts = attention_layout_plot(ctx.decisions)
    if layouts is not None:
        files["attention_layouts.png"] = layouts
        manifest["files"].append("attention_layouts.png")
    manifest["memory"] = {
        **budget.to_dict(), "mode": "streaming" if streaming else "in-memory", "weight_bytes": dense_weight_bytes,
        "spilled_bytes": store.bytes if store is not None else 0, "external_data": external,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_note": "peak resident set of the compiling process, up to the artifact write",
    }
    log.info("memory: peak RSS %s (%s)", fmt_bytes(manifest["memory"]["peak_rss_bytes"]), manifest["memory"]["mode"])
    manifest["executor"] = getattr(options.executor, "name", None) or "local"  # where the parallel calibration work ran
    files["report.md"] = render_report(manifest).encode()
    files[MANIFEST] = json_bytes(manifest)
    return CompileResult(compiled, records, manifest, fidelity, files, verdict)


@dataclass
class _Build:
    """One run of the pipelines on a model, with what the measurements need."""

    model: ir.Model
    pipeline: Pipeline
    legalize: Pipeline
    ctx: PassContext
    records: list[PassRecord]
    sparse_costs: CostReport
    compiled: CompiledModel


def _build(
    model: ir.Model, pipeline: Pipeline, legalize: Pipeline, options: CompileOptions, backend: Any, target: Any,
    calibration: CalibrationData | None, tuner: Any = None, evaluate_input: SharedDenseRun | None = None,
    evaluate_output: SharedCompiledRun | None = None, on_sparse_costs: Callable[[CostReport], None] | None = None,
) -> _Build:
    ctx = PassContext(
        evaluate_input=evaluate_input,
        evaluate_output=evaluate_output,
        target=options.target,
        dims=dict(options.dims),
        seed=options.seed,
        calibration=calibration,
        # A reproducer snapshot keeps every weight a pass replaces alive until the pass ends:
        # not for models big enough to spill (a 26 GB model's pruned copy would stay on disk).
        repro_dir=None if spilling_active() else default_repro_dir(),
        threads=options.threads,
        # Measured only where the target runs here and on ORT (the tuner times ORT sessions).
        tune=options.tune and target.tuned_here and backend.name == "ort",
        tuner=tuner,
        executor=make_executor(options.executor),
    )
    full = pipeline + legalize
    snapshot = _CostsBeforeLegalization(len(pipeline), options, on_sparse_costs)
    instruments = [LogProgress(len(full)), snapshot, *options.instruments]
    records = PassManager(full, verify_each=options.verify_each, instruments=instruments).run(model, ctx)
    sparse_costs = snapshot.costs or estimate_costs(model, target=options.target, dims=options.dims)
    problems = backend.check(model)
    if problems:
        raise UnsupportedError(f"backend '{backend.name}' cannot run this model: {problems[0]}")
    compiled = CompiledModel(backend.name, model, runtime_ops=backend.runtime_ops(model))
    compiled.files.update(backend.extra_files(model, target))
    return _Build(model, pipeline, legalize, ctx, records, sparse_costs, compiled)


def _latency(dense_bytes: bytes, build: _Build, feeds: dict[str, Any], options: CompileOptions) -> dict[str, Any]:
    runners = get_backend(build.compiled.backend).setting_runners(build.compiled, options.threads)
    lat = measure_latency(dense_bytes, runners, feeds, options.threads)
    log.info("latency: dense %.3f ms (%s), compiled %.3f ms (%.2fx, noise +-%.1f%%)", lat["dense_ms"],
             lat["baseline"], lat["compiled_ms"], lat["speedup"], 100 * lat["noise"])
    return lat


def _never_slower(
    original: ir.Model, pipeline: Pipeline, legalize: Pipeline, options: CompileOptions, backend: Any, target: Any,
    calibration: CalibrationData | None, build: _Build, latency: dict[str, Any], dense_bytes: bytes,
    feeds: dict[str, Any],
) -> tuple[_Build, dict[str, Any], dict[str, Any]]:
    """Move kernel layers back to dense, least measured gain first (1, 2, 4, ... at a time),
    rebuilding from the input model each time, until the compiled model is faster beyond noise."""
    queue = kernel_layers_by_gain(build.ctx.decisions)
    steps = [{"layers_moved": 0, "speedup": latency["speedup"], "noise": latency["noise"]}]
    moved: list[dict[str, Any]] = []
    take = 1
    # Gains the end-to-end measurement cannot tell from its noise even all together: moving
    # the layers back a few at a time would only repeat that measurement (a 0.5 s-per-run
    # model: 4 rebuilds and measurements, 395 s), so they all go back at once.
    predicted_ms = sum(max(0.0, q["gain_us"]) for q in queue) / 1000
    if queue and predicted_ms < latency["noise"] * latency["dense_ms"]:
        take = len(queue)
        log.info("never slower: the kernel layers' measured gains (%.3f ms in all) are below the end-to-end noise "
                 "(+-%.3f ms): all %d back to dense at once", predicted_ms, latency["noise"] * latency["dense_ms"], take)
    while queue and not latency["faster"]:
        moved += queue[:take]
        queue = queue[take:]
        take *= 2
        log.info("never slower: %.2fx is not faster than dense beyond noise; moving %d layer(s) back to dense",
                 latency["speedup"], len(moved))
        p, lo = with_dense_layers(pipeline, legalize, [m["weight"] for m in moved])
        build = _build(original.clone(), p, lo, options, backend, target, calibration, build.ctx.tuner)
        latency = _latency(dense_bytes, build, feeds, options)
        steps.append({"layers_moved": len(moved), "speedup": latency["speedup"], "noise": latency["noise"]})
    return build, latency, {
        "moved_to_dense": moved, "steps": steps, "faster_in_the_end": latency["faster"],
        "predicted_gain_ms": round(predicted_ms, 3),
    }


class _CostsBeforeLegalization(Instrument):
    """Takes the cost model of the optimised IR, where sparse ops are still visible, and hands
    it to `on_costs` (the report's plot starts drawing from it while the backend lowers)."""

    def __init__(
        self, first_legalization_index: int, options: CompileOptions, on_costs: Callable[[CostReport], None] | None = None
    ) -> None:
        self.index = first_legalization_index
        self.options = options
        self.on_costs = on_costs
        self.costs: CostReport | None = None

    def before_pass(self, index: int, p: Pass, model: ir.Model) -> None:
        if index == self.index:
            self.costs = estimate_costs(model, target=self.options.target, dims=self.options.dims)
            if self.on_costs is not None:
                self.on_costs(self.costs)


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


Batches = Callable[[list[dict[str, Any]]], list[Any]]  # batches in -> outputs concatenated over them


def _batched(run: Callable[[dict[str, Any]], list[Any]]) -> Batches:
    return lambda batches: run_callable(run, batches)


def _one_at_a_time(make: Callable[[], Callable[[dict[str, Any]], list[Any]]]) -> Batches:
    """A runner whose session exists only while it runs a set of batches."""

    def run(batches: list[dict[str, Any]]) -> list[Any]:
        return run_callable(make(), batches)

    return run


def _shared_dense_run(dense_model: ir.Model, options: CompileOptions, stage_bytes: int | None) -> SharedDenseRun | None:
    """The dense staged run shared by the pass manager's reference and the fidelity check, where
    both would run the same stages with the same settings: standard ONNX input (the pass
    manager's reference lowering leaves it as it is) and the thread count it runs with."""
    if stage_bytes is None or options.threads != NUMERICS_THREADS or options.fidelity_samples < 1:
        return None
    if DOMAIN in dense_model.opset_imports or any(node.domain == DOMAIN for node in dense_model.graph):
        return None
    samples = [sample_inputs(dense_model, dims=options.dims, seed=options.seed + 1 + i) for i in range(options.fidelity_samples)]
    return SharedDenseRun(dense_model, stage_bytes, options.threads, samples)


def _shared_compiled_run(model: ir.Model, options: CompileOptions, first_index: int) -> SharedCompiledRun | None:
    """The last check's run shared with the compiled model's fidelity run, where both would run
    with the same thread count on the same random sample inputs."""
    if options.threads != NUMERICS_THREADS or options.fidelity_samples < 1:
        return None
    samples = [sample_inputs(model, dims=options.dims, seed=options.seed + 1 + i) for i in range(options.fidelity_samples)]
    return SharedCompiledRun(samples, first_index, options.threads)


def _kept_first(shared: SharedCompiledRun, changed: list[bool], run: Batches) -> Batches:
    """`run`, unless the last check already ran the final model on these batches."""

    def kept_or_run(batches: list[dict[str, Any]]) -> list[Any]:
        kept = shared.fidelity(changed, batches)
        return kept if kept is not None else run(batches)

    return kept_or_run


def _staged_runner(model: ir.Model, stage_bytes: int, threads: int) -> Batches:
    from sparsec.calib.staged import run_staged

    return lambda batches: run_staged(model, list(batches), stage_bytes, threads)


def _fidelity(
    model: ir.Model, run_dense: Batches, run_compiled: Batches, options: CompileOptions, held: CalibrationData | None,
    *, unchanged: bool = False,
) -> tuple[Fidelity, dict[str, Any]]:
    """Compiled vs dense outputs: on held-out calibration samples when there are any, else on
    random sample inputs (which say little about real data; the manifest names which).
    `unchanged`: the compiled model is the input model untouched (no layer runs faster on this
    target, so none was pruned): its outputs are the dense run's, not computed a second time."""
    if held is not None:
        held.check_against(model)
        dense = run_dense(list(held.batches_for(model)))
        compiled = dense if unchanged else run_compiled(list(held.batches_for(model)))
        f = compare(dense, compiled, output_rows(held, held.batches_for(model), len(dense)))
        samples, data = held.samples_used(model), "held-out calibration samples"
    else:
        f = None
        samples_in = [sample_inputs(model, dims=options.dims, seed=options.seed + 1 + i) for i in range(options.fidelity_samples)]
        dense_all = run_dense(samples_in)
        compiled_all = dense_all if unchanged else run_compiled(samples_in)
        n = len(samples_in)
        for i in range(n):  # per sample, as before: the worst sample counts
            one = compare(
                [np.split(np.asarray(o), n, axis=0)[i] for o in dense_all],
                [np.split(np.asarray(o), n, axis=0)[i] for o in compiled_all],
            )
            f = one if f is None else f.worst_of(one)
        assert f is not None
        samples, data = options.fidelity_samples, "random sample inputs"
    summary = f"mean cosine {f.mean_cosine:.4f} (worst {f.worst_cosine:.4f}) on {samples} {data}"
    info = {**f.to_dict(), "metric": "mean_cosine", "samples": samples, "data": data, "summary": summary,
            "inputs": "calibration" if held is not None else "random", "reference": "dense input model on ORT CPU"}
    if unchanged:
        info["compiled_outputs"] = "the dense run's: the compiled model is the input model unchanged"
    return f, info


def _manifest(
    source: str,
    input_hash: str | Future[str] | None,
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
        "input": {"source": source, "sha256": input_hash.result() if isinstance(input_hash, Future) else input_hash},
        "target": get_target(options.target).spec,
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
    from sparsec.ir.io import external_data_files, model_hash

    out = Path(out_dir)
    check_output_dir(out, force=force)
    options = options or CompileOptions()
    options.optimisation_pipeline()  # validate options before the (slow) load
    # Before the (slow) load too: an unknown backend or a missing cross toolchain fails here.
    get_backend(get_target(options.target).backend_for(options.backend))
    # The file's hash (0.3-0.5 s of reading and sha256 for BERT-base) on the second core while
    # the model loads and compiles (both release the GIL); the manifest waits for it at the end.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsec-hash")
    prior = None
    try:
        digest: str | Future[str]
        is_file = Path(str(spec)).is_file()
        file_hash = hasher.submit(model_hash, spec) if is_file else None
        model, source = load_any(str(spec), by_reference=True)
        # Not the model file itself, whose large inline weights are read in place like external data.
        external = [f for f in external_data_files(model) if f.resolve() != Path(str(spec)).resolve()] if is_file else []
        if external:  # the weights live beside the (then small) model file: hash them too
            file_hash = hasher.submit(model_hash, spec, external)
        digest = file_hash if file_hash is not None else _ir_hash(model)
        if get_target(options.target).backend_for(options.backend) == "tvm":
            from sparsec.backends.tvm.tuning import PRIOR_DATABASE, database_in

            prior = PRIOR_DATABASE.set(database_in(out))  # a tuned artifact's database is applied, and kept
        result = compile_model(model, options, source=str(source), input_hash=digest)
    finally:
        if prior is not None:
            PRIOR_DATABASE.reset(prior)
        hasher.shutdown(wait=False, cancel_futures=True)
    write_artifact(out, result.files, force=force)
    return result


def _ir_hash(model: ir.Model) -> str:
    import hashlib

    return hashlib.sha256(model_bytes(model)).hexdigest()


__all__ = ["CompileOptions", "CompileResult", "compile_file", "compile_model"]
