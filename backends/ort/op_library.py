"""The kernel op library an artifact carries, so plain ONNX Runtime can run it without sparsec.

An artifact whose model uses the `com.sparsec.kernels` custom ops ships the compiled library
that defines them as `libsparsec_kernels.so` (one file per target ISA family: this x86-64 build
picks AVX-512, AVX2 or scalar code at run time). The manifest's `kernel_library` entry names
it with its sha256, architecture and identity string (`sparsec_kernels_info()` in
kernels/src/sk_ort_ops.c), and says how to load it:

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library("out/libsparsec_kernels.so")
    session = onnxruntime.InferenceSession("out/model.onnx", so)

(C, C++, C#, Java: the same `RegisterCustomOpsLibrary` call on the session options; see
kernels/examples/run_artifact.c.) `sparsec.runtime` prefers the artifact's own copy once its
hash and identity check out.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from sparsec.errors import InputError

LIBRARY_FILE = "libsparsec_kernels.so"
MANIFEST_KEY = "kernel_library"
MIN_ONNXRUNTIME = "1.16"  # the library asks for ONNX Runtime's C API version 16
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

log = logging.getLogger("sparsec.backends.ort")


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def library_info(path: str | os.PathLike) -> str:
    """The identity string a sparsec kernel library reports (loads it); InputError otherwise."""
    try:
        lib = ctypes.CDLL(str(path))
        fn = lib.sparsec_kernels_info
    except (OSError, AttributeError) as e:
        raise InputError(f"{path}: not a sparsec kernel library ({e})") from None
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return (fn() or b"").decode()


def _info_fields(info: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in info.split() if "=" in part)


@lru_cache(maxsize=1)
def deployable_library() -> bytes:
    """The installed kernel library as an artifact ships it: debug sections stripped when
    `strip` is available (4.9 MB -> 0.5 MB; same code, same exported symbols)."""
    from sparsec.backends.ort.sparse_ops import library_path

    source = Path(library_path())
    strip = shutil.which("strip")
    if strip is not None:
        with tempfile.TemporaryDirectory(prefix="sparsec-lib-") as tmp:
            out = Path(tmp) / LIBRARY_FILE
            proc = subprocess.run([strip, "--strip-debug", "-o", str(out), str(source)], capture_output=True, check=False)
            if proc.returncode == 0:
                return out.read_bytes()
            log.debug("strip failed (%s); shipping the library unstripped", proc.stderr.decode(errors="replace").strip())
    return source.read_bytes()


def manifest_entry(data: bytes, ops: list[str]) -> dict[str, Any]:
    """The manifest's `kernel_library` section for library bytes `data` (as written)."""
    from sparsec.backends.ort.sparse_ops import library_path

    info = library_info(library_path())  # the same build as `data`
    fields = _info_fields(info)
    return {
        "file": LIBRARY_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "arch": fields.get("arch", host_arch()),
        "ops_abi": fields.get("ops-abi"),
        "domain": fields.get("domain"),
        "info": info,
        "ops": ops,
        "onnxruntime": f">={MIN_ONNXRUNTIME}",
        "isa": "run-time dispatch: avx512, avx2, scalar ($SPARSEC_KERNEL_ISA forces one)"
        if fields.get("arch") == "x86_64" else "run-time dispatch",
        "load": {
            "python": f'so = onnxruntime.SessionOptions(); so.register_custom_ops_library("{LIBRARY_FILE}"); '
            'onnxruntime.InferenceSession("model.onnx", so)',
            "c": f'api->RegisterCustomOpsLibrary(session_options, "{LIBRARY_FILE}", &handle) before CreateSession '
            "(example: kernels/examples/run_artifact.c)",
            "threads": 'session config entry "sparsec.kernel_threads" (default 1; 0 = all cores), set before registering',
        },
    }


def artifact_library(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Path of the artifact's own kernel library if sparsec should use it, else None.

    None when the manifest names none, or the library is for another architecture, or the
    file is missing (the installed library then runs the model; a warning says so).
    InputError when the file is there but is not what the manifest describes (hash or
    identity differ): a corrupted or replaced library is never loaded.
    """
    entry = manifest.get(MANIFEST_KEY)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    name = entry["file"]
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise InputError(f"{folder}: manifest names kernel library '{name}', which is not a plain file name")
    path = Path(folder) / name
    if entry.get("arch") not in (None, host_arch()):
        log.info("%s is built for %s, this machine is %s: using the installed kernels", path, entry["arch"], host_arch())
        return None
    if not path.is_file():
        log.warning("%s: the manifest lists %s but it is missing: using the installed kernels", folder, name)
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry.get("sha256"):
        raise InputError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {str(entry.get('sha256'))[:12]}...")
    info = library_info(path)
    if entry.get("info") is not None and info != entry["info"]:
        raise InputError(f"{path}: reports '{info}', the manifest expects '{entry['info']}'")
    return str(path)
