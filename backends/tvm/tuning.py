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

import logging
import shutil
import tempfile
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
    with tempfile.TemporaryDirectory(prefix="sparsec-ms-") as work:
        contexts, weights = _contexts(tasks, work, seed)
        database = ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work,
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            builder=ms.builder.LocalBuilder(max_workers=1),
            runner=ms.runner.LocalRunner(
                evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0)),
            database=ms.database.JSONDatabase(
                path_workload=str(Path(work) / WORKLOAD), path_tuning_record=str(Path(work) / RECORDS)),
            cost_model="random",  # xgboost is not a dependency; with a few trials it would not learn anyway
        )
        records = len(database.get_all_tuning_records())
        for name in DATABASE_FILES:
            shutil.copyfile(Path(work) / name, database_dir / name)
    return {"tasks": len(tasks), "task_names": [t.task_name for t in tasks], "trials": trials, "records": records}


def _contexts(tasks: list[Any], work: str, seed: int) -> tuple[list[Any], list[float]]:
    """Tune contexts as `extracted_tasks_to_tune_contexts` makes them, but with one search
    thread: its default asks psutil (not a dependency) for the core count, and the cores are
    shared anyway."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import fork_seed, get_loggers_from_work_dir

    names = [t.task_name for t in tasks]
    contexts, weights = [], []
    for task, logger, rand in zip(tasks, get_loggers_from_work_dir(work, names), fork_seed(seed, n=len(tasks)), strict=True):
        if task.mod.attrs.get("tirx.is_scheduled", False):
            continue
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                                       search_strategy="evolutionary", task_name=task.task_name, logger=logger,
                                       rand_state=rand, num_threads=1).clone())
        weights.append(task.weight)
    return contexts, weights


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
