"""Build a legalized ONNX model into a CUDA model.so with TVM (compile only: no GPU here).

    built = build_cuda_model(onnx_model, "sm_80")

Steps: eligible 2:4 layers become calls of sparsec's CUDA kernel (sp24_layers.py); the model
is imported into Relax (TVM's ONNX importer, weights as trailing parameters), weight-only
work is lifted and run once on this CPU (backends/tvm/build.py), the rest goes through TVM's
CUDA pipeline (legalize, fuse, dlight GPU schedules Matmul/GEMV/Reduction/GeneralReduction/
Fallback so every PrimFunc gets thread bindings, CUDA codegen). The generated CUDA C is
compiled to a fatbin with nvcc at export (library_blob.py explains why), and the kernel
library (kernels/cuda/sp24_kernels.cu + kernels/tvm_cuda/sk_tvm_cuda.cu, nvcc objects) is
linked in, so model.so needs TVM's CUDA runtime and libcudart only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sparsec.backends.tvm_cuda import sp24_layers
from sparsec.backends.tvm_cuda.library_blob import blob_from_c, blob_to_c, compile_cuda_modules
from sparsec.errors import UnsupportedError
from sparsec.kernels import cuda_build

log = logging.getLogger("sparsec.backends.tvm_cuda")

NVCC_FLAGS = ("-O3", "-std=c++17")


@dataclass
class CudaTvmBuild:
    library: bytes
    params: list[np.ndarray]
    output_names: list[str]
    plan: sp24_layers.LayerPlan
    kernels: list[str]  # TVM-generated CUDA kernels in model.so
    info: dict[str, Any]


def tvm_target(arch: str) -> Any:
    import tvm

    from sparsec.backends.tvm.target_spec import host_spec

    host = {k: v for k, v in host_spec().llvm.items() if k != "num-cores"}
    return tvm.target.Target({"kind": "cuda", "arch": arch, "host": host})


def _gencode(arch: str) -> str:
    n = arch.split("_", 1)[1]
    return f"-gencode=arch=compute_{n},code=[sm_{n},compute_{n}]"  # SASS + PTX for newer GPUs


def _nvcc() -> str:
    nvcc = cuda_build.find_nvcc()
    if nvcc is None:
        raise UnsupportedError("--target=cuda --backend=tvm needs nvcc (CUDA toolkit) to compile kernels; set SPARSEC_NVCC")
    return nvcc


def _run_nvcc(cmd: list[str], what: str) -> None:
    log.info("nvcc: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        first = (errors or proc.stderr.splitlines() or ["(no output)"])[0]
        raise UnsupportedError(f"backend 'tvm-cuda': nvcc failed on {what}: {first.strip()}")


def fatbin_compiler(arch: str, workdir: Path) -> Any:
    """cuda_c -> fatbin bytes (nvcc, SASS for `arch` and its PTX)."""
    nvcc = _nvcc()

    def compile_source(code: str) -> bytes:
        src = workdir / "tvm_kernels.cu"
        out = workdir / "tvm_kernels.fatbin"
        src.write_text(code)
        _run_nvcc([nvcc, *NVCC_FLAGS, _gencode(arch), "-fatbin", str(src), "-o", str(out)], "TVM's generated CUDA")
        return out.read_bytes()

    return compile_source


def kernel_objects(arch: str) -> list[str]:
    """The sparse kernel library and its TVM FFI entry point as nvcc objects (cached by
    sources, arch, flags and nvcc version under sparsec's CUDA cache)."""
    import tvm_ffi.libinfo

    nvcc = _nvcc()
    kernels = Path(cuda_build.__file__).resolve().parent
    sources = [kernels / "cuda" / cuda_build.MAIN_SOURCE, kernels / "tvm_cuda" / "sk_tvm_cuda.cu"]
    includes = [f"-I{tvm_ffi.libinfo.find_include_path()}", f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}"]
    flags = [*NVCC_FLAGS, _gencode(arch), "-Xcompiler", "-fPIC", *includes]
    digest = hashlib.sha256(" ".join([*flags, cuda_build.nvcc_version(nvcc)]).encode())
    for path in [*sources, *sorted((kernels / "cuda").glob("*.cuh"))]:
        digest.update(path.name.encode() + path.read_bytes())
    out = cuda_build.cache_root() / f"tvm-{arch}-{digest.hexdigest()[:16]}"
    objects = [out / (s.stem + ".o") for s in sources]
    if all(o.is_file() for o in objects):
        return [str(o) for o in objects]
    out.mkdir(parents=True, exist_ok=True)
    for src, obj in zip(sources, objects, strict=True):
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".o.tmp")
        os.close(fd)
        try:
            _run_nvcc([nvcc, *flags, "-c", str(src), "-o", tmp], src.name)
            os.replace(tmp, obj)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return [str(o) for o in objects]


def _cudart_dir() -> str:
    nvcc = Path(_nvcc()).resolve()
    for cand in (nvcc.parent.parent / "lib64", nvcc.parent.parent / "lib",
                 Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "lib64"):
        if (cand / "libcudart.so").exists():
            return str(cand)
    raise UnsupportedError("backend 'tvm-cuda': libcudart.so not found next to nvcc (needed to link model.so)")


def import_model(model: onnx.ModelProto) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    """Relax module (main takes the inputs, then the weights) with Sp24MatMul as kernel calls."""
    from sparsec.backends.tvm.importer import _first_line, importer_base, unsupported_ops

    problems = [p for p in unsupported_ops(model) if f"{sp24_layers.DOMAIN}.{sp24_layers.OP}" not in p]
    if problems:
        raise UnsupportedError(f"backend 'tvm-cuda' cannot import this model: {problems[0]}")

    class _Importer(importer_base()):
        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name == sp24_layers.OP:
                return self.bb.normalize(sp24_layers.relax_call(self.bb, list(inputs), attrs))
            return super()._convert_operator(op_name, inputs, attrs, opset)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _Importer({}, "float32", keep_params_in_input=True, sanitize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = importer.from_onnx(model.graph, opset)
        except UnsupportedError:
            raise
        except Exception as e:
            raise UnsupportedError(f"backend 'tvm-cuda': TVM's ONNX importer failed: {_first_line(e)}") from None
    return mod, [(name, value.numpy()) for name, (_, value) in importer._params.items()]


def build_cuda_model(model: onnx.ModelProto, arch: str) -> CudaTvmBuild:
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline
    from tvm.runtime import _ffi_api
    from tvm.support import cc

    from sparsec.backends.tvm.build import (
        _bind_non_tensors,
        _innermost_frame,
        _lift,
        _transform_params,
    )

    t0 = time.perf_counter()
    rewritten, plan = sp24_layers.rewrite(model)
    mod, named = import_model(rewritten)
    deploy, transform = _lift(mod)
    deploy, params = _bind_non_tensors(deploy, _transform_params(transform, [v for _, v in named]))
    target = tvm_target(arch)
    t1 = time.perf_counter()
    try:
        ex = tvm.compile(deploy, target, relax_pipeline=cuda_pipeline.get_default_pipeline(target))
    except Exception as e:
        log.debug("TVM CUDA compile failed", exc_info=True)
        text = (str(e).strip().splitlines() or [""])[-1] or _innermost_frame(e)
        raise UnsupportedError(f"backend 'tvm-cuda': TVM could not compile the model for CUDA: {type(e).__name__}: {text}") from None
    t2 = time.perf_counter()
    objects = kernel_objects(arch) if plan.sparse else []
    kernels: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sparsec-tvm-cuda-") as tmp:
        work = Path(tmp)
        compile_source = fatbin_compiler(arch, work)

        def pack_imports(mod: Any, is_system_lib: bool, prefix: str, workspace: str) -> str:
            if is_system_lib or prefix:
                raise UnsupportedError("backend 'tvm-cuda': system-lib builds are not supported")
            blob, names = compile_cuda_modules(blob_from_c(_ffi_api.ModulePackImportsToC(mod, False, "")), compile_source)
            kernels.extend(names)
            path = Path(workspace) / "devc.c"
            path.write_text(blob_to_c(blob))
            return str(path)

        lib = work / "model.so"
        options = [*objects, "-pthread"] + ([f"-L{_cudart_dir()}", "-lcudart"] if objects else [])
        ex.export_library(str(lib), fcompile=cc.cross_compiler("g++", options=options), fpack_imports=pack_imports)
        library = lib.read_bytes()
    t3 = time.perf_counter()
    info = {
        "tvm_target": str(target),
        "arch": arch,
        "import_s": round(t1 - t0, 2),
        "compile_s": round(t2 - t1, 2),
        "export_s": round(t3 - t2, 2),
        "schedules": "TVM CUDA pipeline: dlight gpu Matmul, GEMV, Reduction, GeneralReduction, Fallback",
        "device_code": f"TVM's CUDA C compiled by nvcc to a fatbin ({_gencode(arch)}) inside model.so",
        "sparse_kernel": (f"{sp24_layers.FUNC} (kernels/cuda/sp24_kernels.cu, mma.sp fp16, fp32 accumulate) "
                          "linked into model.so; needs libcudart at run time") if plan.sparse else None,
    }
    return CudaTvmBuild(library, params, [o.name for o in model.graph.output], plan, kernels, info)
