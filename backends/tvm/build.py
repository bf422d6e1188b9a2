"""Build a legalized ONNX model into a TVM library: import, lift weight transforms, schedule,
compile, export model.so with the sparse kernels linked in, and the parameter file.

    lib, params, info = build_model(onnx_model, spec)

Weights are `main`'s trailing parameters (not constants baked into the library). Work that
depends on weights only (Gemm's transposed B, constant reshapes) is lifted into a separate
`transform_params` function (`LiftTransformParams`), built for *this* machine and run once at
compile time, so the deployed library gets the transformed weights and does no weight work
per call, and a cross build still runs its transform here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sparsec.backends.tvm.importer import import_onnx
from sparsec.backends.tvm.kernel_objects import kernel_objects
from sparsec.backends.tvm.schedules import schedule_pass
from sparsec.backends.tvm.target_spec import TvmTargetSpec, host_spec
from sparsec.errors import UnsupportedError

log = logging.getLogger("sparsec.backends.tvm")

MAIN = "main"
TRANSFORM = "main_transform_params"


@dataclass
class TvmBuild:
    library: bytes  # model.so
    params: list[np.ndarray]  # main's trailing arguments, in order
    input_names: list[str]
    output_names: list[str]
    info: dict[str, Any]  # for the manifest


def relax_pipeline(target: Any, database: Any = None, stats: dict[str, Any] | None = None) -> Any:
    """The CPU pipeline of tvm.relax.backend.cpu_generic with the schedules inserted after
    fusion (where TIR PrimFuncs exist) and before lowering. With a MetaSchedule `database`
    (backends/tvm/tuning.py) its schedules are applied first; the explicit schedules then
    take the functions it does not cover. `stats` receives how many functions each got."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    def count(key: str) -> Any:
        @tvm.transform.module_pass(opt_level=0, name=f"SparsecCount_{key}")
        def _count(mod: Any, _ctx: Any) -> Any:
            if stats is not None:
                stats[key] = sum(1 for _, f in mod.functions_items() if _is_scheduled(f))
            return mod

        return _count

    def passes() -> list[Any]:  # made under the target: MetaScheduleApplyDatabase reads it when made
        return [
            *cpu.library_dispatch_passes(target),
            *cpu.legalize_passes(target),
            count("prim_funcs_scheduled_before"),
            *([relax.transform.MetaScheduleApplyDatabase(enable_warning=False), count("from_database")]
              if database is not None else []),
            schedule_pass(),
            count("scheduled"),
            *cpu.dataflow_lower_passes(target),
            *cpu.finalize_passes(target),
        ]

    @tvm.transform.module_pass(opt_level=0, name="SparsecCPUPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            if database is None:
                return tvm.transform.Sequential(passes())(mod)
            with database:
                return tvm.transform.Sequential(passes())(mod)

    return _pipeline


def _is_scheduled(func: Any) -> bool:
    from tvm.tirx import PrimFunc

    return isinstance(func, PrimFunc) and bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def _lift(mod: Any) -> tuple[Any, Any]:
    """(deploy module with `main`, module whose `main` transforms the weights)."""
    import tvm
    from tvm import relax

    lifted = relax.transform.LiftTransformParams()(mod)

    def only(name: str) -> Any:  # keeps the PrimFuncs the importer already emitted (emit_te)
        other = TRANSFORM if name == MAIN else MAIN
        kept = tvm.IRModule({gv: f for gv, f in lifted.functions_items() if gv.name_hint != other})
        return relax.transform.DeadCodeElimination(entry_functions=[name])(kept)

    return only(MAIN), only(TRANSFORM)


def _transform_params(transform: Any, params: list[np.ndarray]) -> list[Any]:
    """Run the lifted weight transform here: one value per trailing `main` parameter, an
    array for a tensor, a tuple of ints for a shape (a weight-only shape computation:
    a Reshape target stored as a big integer initializer), a number for a PrimValue."""
    import tvm
    from tvm import relax

    host = host_spec()
    ex = tvm.compile(transform, host.tvm_target(), relax_pipeline=relax_pipeline(host.tvm_target()))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    dev = tvm.cpu()
    out = vm[TRANSFORM]([tvm.runtime.tensor(p, dev) for p in params])
    return [_host_value(v) for v in out]


def _host_value(value: Any) -> Any:
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    if isinstance(value, int | float):
        return value
    return tuple(int(d) for d in value)  # a shape (tvm.runtime.Shape)


def _bind_non_tensors(deploy: Any, values: list[Any]) -> tuple[Any, list[np.ndarray]]:
    """(deploy module with its non-tensor weight values bound as constants, the tensors).

    Shapes and scalars cannot ship in the parameter file and, bound, let the shape
    computations that use them fold (CanonicalizeBindings resolves their match_casts)."""
    from tvm import relax

    if all(isinstance(v, np.ndarray) for v in values):
        return deploy, values
    main = deploy[MAIN]
    trailing = list(main.params)[len(main.params) - len(values):]
    bound: dict[Any, Any] = {}
    for var, value in zip(trailing, values, strict=True):
        if isinstance(value, tuple):
            bound[var] = relax.ShapeExpr(list(value))
        elif not isinstance(value, np.ndarray):
            bound[var] = relax.PrimValue(value)
    deploy[MAIN] = main.bind_params(bound)
    deploy = relax.transform.CanonicalizeBindings()(deploy)
    return deploy, [v for v in values if isinstance(v, np.ndarray)]


def import_and_lift(model: onnx.ModelProto, nm_lowering: str = "packed") -> tuple[Any, list[np.ndarray]]:
    """(deploy module, its weights after the lifted weight transforms)."""
    mod, named = import_onnx(model, nm_lowering)
    deploy, transform = _lift(mod)
    return _bind_non_tensors(deploy, _transform_params(transform, [v for _, v in named]))


def build_model(model: onnx.ModelProto, spec: TvmTargetSpec, database: Any = None,
                nm_lowering: str = "packed") -> TvmBuild:
    """Build `model`; `database`: a MetaSchedule database to apply before the explicit schedules;
    `nm_lowering`: N:M layers as the packed C kernel (default) or TIR (backends/tvm/importer.py)."""
    import tvm
    from tvm.support import cc

    t0 = time.perf_counter()
    deploy, params = import_and_lift(model, nm_lowering)
    target = spec.tvm_target()
    t1 = time.perf_counter()
    stats: dict[str, Any] = {}
    try:
        ex = tvm.compile(deploy, target, relax_pipeline=relax_pipeline(target, database, stats))
    except Exception as e:
        log.debug("TVM compile failed", exc_info=True)
        text = (str(e).strip().splitlines() or [""])[-1] or _innermost_frame(e)
        raise UnsupportedError(f"backend 'tvm': TVM could not compile the model: {type(e).__name__}: {text}") from None
    t2 = time.perf_counter()
    objects = kernel_objects(spec)
    with tempfile.TemporaryDirectory(prefix="sparsec-tvm-") as tmp:
        path = Path(tmp) / "model.so"
        fcompile = cc.cross_compiler(spec.cc, options=[*objects, "-pthread"])
        ex.export_library(str(path), fcompile=fcompile)
        library = path.read_bytes()
    t3 = time.perf_counter()
    inits = {i.name for i in model.graph.initializer}
    info = {
        "target": spec.llvm,
        "arch": spec.name,
        "cc": spec.cc,
        "params": len(params),
        "import_s": round(t1 - t0, 2),
        "compile_s": round(t2 - t1, 2),
        "link_s": round(t3 - t2, 2),
        "schedules": "dlight CPU GEMV, RowReduction (dlight Reduction where it parallelizes rows), then sparsec LoopNestCPU (backends/tvm/schedules.py)",
        **({"tuned_functions": stats.get("from_database", 0) - stats.get("prim_funcs_scheduled_before", 0)}
           if database is not None else {}),
        "sparse_kernels": "sparsec C kernels linked into model.so (packed functions sparsec_nm_matmul, sparsec_block_matmul)"
        + ("; N:M (M=4) layers as TIR PrimFuncs (nm_lowering=tir)" if nm_lowering == "tir" else ""),
    }
    return TvmBuild(
        library=library,
        params=params,
        input_names=[i.name for i in model.graph.input if i.name not in inits],
        output_names=[o.name for o in model.graph.output],
        info=info,
    )


def _innermost_frame(e: BaseException) -> str:
    """Where an exception without a message was raised (TVM asserts carry none)."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return f"raised in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
