"""MetaSchedule tuning of a TVM artifact's dense TIR (`sparsec tune ARTIFACT --backend=tvm`).

The explicit schedules (schedules.py) need no search; MetaSchedule may find better ones for a
given shape, but searching costs hours for a whole model on 2 cores, so it runs offline, on
request, with a trial budget. Its database (two JSON files, `tvm_ms_workload.json` and
`tvm_ms_records.json`) is stored in the artifact; a build given the database applies it
(`relax.transform.MetaScheduleApplyDatabase`) before the explicit schedules, which then only
schedule the functions the database does not cover (dlight skips functions already marked
scheduled).

The tasks are the fused PrimFuncs of the same pipeline build.py compiles (library dispatch,
legalization, fusion), so the database's workloads match the build's functions structurally.
The sparse kernels are packed calls into C, not TIR: they are never tuned.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import sys
import tempfile
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import onnx

from sparsec.backends.tvm.target_spec import TvmTargetSpec

log = logging.getLogger("sparsec.backends.tvm")

WORKLOAD = "tvm_ms_workload.json"
RECORDS = "tvm_ms_records.json"
DATABASE_FILES = (WORKLOAD, RECORDS)


def dense_tir_module(model: onnx.ModelProto, spec: TvmTargetSpec) -> Any:
    """The deploy module after legalization and fusion: `main` calls the PrimFuncs to tune."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from sparsec.backends.tvm.build import import_and_lift

    deploy, _params = import_and_lift(model)
    target = spec.tvm_target()
    with target:
        return tvm.transform.Sequential([*cpu.library_dispatch_passes(target), *cpu.legalize_passes(target)])(deploy)


def tune(model: onnx.ModelProto, spec: TvmTargetSpec, trials: int, database_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Run MetaSchedule with `trials` trials in all over the model's dense PrimFuncs and write
    its database files into `database_dir`. One build worker, one measuring process (the
    machine is shared); returns what the manifest records about the search."""
    from tvm.s_tir import meta_schedule as ms

    mod = dense_tir_module(model, spec)
    target = spec.tvm_target()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        return {"tasks": 0, "trials": 0, "records": 0}
    import_tensor_intrinsics()
    with tempfile.TemporaryDirectory(prefix="sparsec-ms-") as work:
        contexts, weights = _contexts(tasks, work, seed, trials)
        database = ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work,
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            builder=_in_process_builder(),
            runner=_in_process_runner(),
            database=ms.database.JSONDatabase(
                path_workload=str(Path(work) / WORKLOAD), path_tuning_record=str(Path(work) / RECORDS)),
            cost_model="random",  # xgboost is not a dependency; with a few trials it would not learn anyway
        )
        records = len(database.get_all_tuning_records())
        for name in DATABASE_FILES:
            shutil.copyfile(Path(work) / name, database_dir / name)
    return {"tasks": len(tasks), "task_names": [t.task_name for t in tasks], "trials": trials, "records": records}


def import_tensor_intrinsics() -> None:
    """Import `tvm.s_tir.tensor_intrin` (TuneContext imports it on first use) without the
    rescans of sys.modules that made it ~90% of `sparsec tune --backend=tvm` on a small model.

    The module parses the TVMScript intrinsics of every target; each `T.prim_func` calls
    `inspect.stack()`, which asks `inspect.getmodule` about every frame on the stack. For a frame
    whose file does not exist ("<frozen importlib._bootstrap>", "<frozen runpy>", "<string>":
    every import and `python -m` has them) getmodule answers None, but only after rescanning all
    of sys.modules (thousands of modules: TVM imports torch), twice per frame. While importing,
    such frames get None at once. That is the scan's own answer when no module's __file__ is a
    "<...>" name (checked first; otherwise the import runs unchanged); a frame, code object or
    traceback has no __name__, so getmodule's last resort (a __main__ or builtins attribute of
    that name) never matches it.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    pseudo_files = [m for m in list(sys.modules.values())
                    if Path(str(getattr(m, "__file__", None) or "x")).name.startswith("<")]
    original = inspect.getmodule

    def getmodule(obj: Any, _filename: str | None = None) -> Any:
        if (_filename is not None and _filename.startswith("<") and _filename.endswith(">")
                and (inspect.isframe(obj) or inspect.iscode(obj) or inspect.istraceback(obj))):
            return None
        return original(obj, _filename)

    if not pseudo_files:
        inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.getmodule = original


def _in_process_builder() -> Any:
    """Builds candidates in this process. MetaSchedule's LocalBuilder starts a worker process
    per batch; here (TVM 0.27, ffi 0.1.14) its results came back empty (no artifact, no
    error), and each worker spends tens of seconds importing TVM on a loaded machine."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            out = []
            for b in build_inputs:
                try:
                    out.append(BuilderResult(default_export(default_build(b.mod, b.target, None)), None))
                except Exception as e:  # a candidate that does not compile is a failed trial
                    out.append(BuilderResult(None, f"build failed: {type(e).__name__}: {e}"))
            return out

    return InProcessBuilder()


def _in_process_runner() -> Any:
    """Times candidates in this process (3 runs each), for the builder's reasons."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture, _worker_func

    config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0)

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            out = []
            for r in runner_inputs:
                try:
                    costs = _worker_func(None, None, None, config, 1, str(r.artifact_path), str(r.device_type),
                                         tuple(a.as_json() for a in r.args_info))
                    out.append(LocalRunnerFuture(res=costs, error_message=None))
                except Exception as e:
                    out.append(LocalRunnerFuture(res=None, error_message=f"run failed: {type(e).__name__}: {e}"))
            return out

    return InProcessRunner()


def _contexts(tasks: list[Any], work: str, seed: int, trials: int) -> tuple[list[Any], list[float]]:
    """Tune contexts as `extracted_tasks_to_tune_contexts` makes them, but with one search
    thread: its default asks psutil (not a dependency) for the core count, and the cores are
    shared anyway."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import fork_seed, get_loggers_from_work_dir

    names = [t.task_name for t in tasks]
    contexts, weights = [], []
    # A population far above the trial budget only costs sampling time (a tiny budget is a smoke run).
    population = min(64, max(8, 4 * trials))
    for task, logger, rand in zip(tasks, get_loggers_from_work_dir(work, names), fork_seed(seed, n=len(tasks)), strict=True):
        if task.mod.attrs.get("tirx.is_scheduled", False):
            continue
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                                       search_strategy=ms.search_strategy.EvolutionarySearch(
                                           population_size=population, init_min_unmeasured=min(16, population), genetic_num_iters=2), task_name=task.task_name, logger=logger,
                                       rand_state=rand, num_threads=1).clone())
        weights.append(task.weight)
    return contexts, weights


# Set by compile_file when it writes over a tuned TVM artifact: that artifact's database files,
# which the new build applies and keeps (a recompile keeps what `sparsec tune` found).
PRIOR_DATABASE: ContextVar[dict[str, bytes] | None] = ContextVar("sparsec_tvm_prior_database", default=None)


def database_in(folder: Path) -> dict[str, bytes] | None:
    """The MetaSchedule database files of the TVM artifact in `folder`, if it has them."""
    from sparsec.artifact import artifact_files

    owned = artifact_files(folder) or set()
    if not all(name in owned and (folder / name).is_file() for name in DATABASE_FILES):
        return None
    return {name: (folder / name).read_bytes() for name in DATABASE_FILES}


def load_database(files: dict[str, bytes]) -> tuple[Any, tempfile.TemporaryDirectory] | None:
    """The MetaSchedule database stored in artifact `files` (and the folder holding it, to
    keep alive while it is used), or None when the artifact has none."""
    if not all(name in files for name in DATABASE_FILES):
        return None
    from tvm.s_tir import meta_schedule as ms

    tmp = tempfile.TemporaryDirectory(prefix="sparsec-ms-db-")
    for name in DATABASE_FILES:
        (Path(tmp.name) / name).write_bytes(files[name])
    db = ms.database.JSONDatabase(path_workload=str(Path(tmp.name) / WORKLOAD),
                                  path_tuning_record=str(Path(tmp.name) / RECORDS), allow_missing=False)
    return db, tmp


def _median_ms(files: dict[str, bytes], threads: int, budget_s: float = 0.5) -> float:
    """Median latency of one run of the artifact `files` on seeded random inputs."""
    import time

    import numpy as np

    from sparsec.backends.tvm.session import TvmSession

    session = TvmSession(files, threads)
    rng = np.random.default_rng(0)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) if "float" in i["dtype"]
             else np.zeros(i["shape"], i["dtype"]) for i in session.inputs}
    session.run(feeds)  # warm-up
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 1000):
        t0 = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1e3, 4)


def tune_artifact(folder: Path, trials: int, threads: int = 2) -> dict[str, Any]:
    """`sparsec tune ARTIFACT --backend=tvm --trials N`: tune the artifact's dense TIR, rebuild
    model.so with the database and write both (and the manifest's `tvm_tuning`) back into it."""
    import json
    import os

    from sparsec.artifact import MANIFEST, artifact_files, write_artifact
    from sparsec.backends.tvm.build import build_model
    from sparsec.backends.tvm.session import LIBRARY, SIGNATURE
    from sparsec.backends.tvm.target_spec import host_spec
    from sparsec.errors import InputError

    owned = artifact_files(folder) or set()
    manifest = json.loads((folder / MANIFEST).read_text())
    files = {name: (folder / name).read_bytes() for name in sorted(owned) if (folder / name).is_file()}
    signature = json.loads(files[SIGNATURE])
    if not signature.get("runs_here", True):
        raise InputError(f"{folder}: a {signature['build']['arch']} build cannot be tuned on this machine")
    model = onnx.load_from_string(files["model.onnx"])
    spec = host_spec()
    before_ms = _median_ms(files, threads)
    with tempfile.TemporaryDirectory(prefix="sparsec-ms-out-") as out:
        search = tune(model, spec, trials, Path(out))
        for name in DATABASE_FILES:
            files[name] = (Path(out) / name).read_bytes()
    db, keep = load_database(files)  # type: ignore[misc]
    with keep:
        built = build_model(model, spec, db)
    files[LIBRARY] = built.library
    signature["build"] = built.info
    files[SIGNATURE] = json.dumps(signature, indent=2).encode() + b"\n"
    after_ms = _median_ms(files, threads)
    manifest["files"] = sorted(set(manifest["files"]) | set(DATABASE_FILES))
    manifest["tvm_tuning"] = {
        **search, "database": list(DATABASE_FILES), "functions_from_database": built.info.get("tuned_functions", 0),
        "latency_ms_before": before_ms, "latency_ms_after": after_ms, "threads": threads,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    files[MANIFEST] = json.dumps(manifest, indent=2).encode() + b"\n"
    write_artifact(folder, files)
    return manifest["tvm_tuning"]
