"""aarch64 runtime libraries taken from manylinux aarch64 wheels: TVM's (`apache-tvm`,
`apache-tvm-ffi`) and ONNX Runtime's (`onnxruntime`).

No aarch64 Python is needed: the wheels are downloaded by platform (`pip download
--platform manylinux_2_28_aarch64 --only-binary=:all: --no-deps`, about 100 MB, once), and
only the shared libraries are unpacked into the user cache. The versions are the host's
installed ones, so libraries compiled here (whose packed functions use the host's tvm-ffi
headers) match the runtime they load into, and ONNX Runtime behaves as the host's.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cross_build import CrossToolchainError, cache_root

log = logging.getLogger("sparsec.kernels.cross")

PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
# wheel distribution -> the library it contributes (path inside the wheel)
LIBRARIES = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


ORT_LIBRARY = "libonnxruntime.so.1"  # its soname: what programs linked against it look for


def versions(dists: tuple[str, ...] = tuple(LIBRARIES)) -> dict[str, str]:
    try:
        return {dist: importlib.metadata.version(dist) for dist in dists}
    except importlib.metadata.PackageNotFoundError as e:
        raise CrossToolchainError(f"{e.name} is not installed here (pip install 'sparsec[tvm]')") from None


def runtime_dir(download: bool = True) -> Path:
    """A folder holding the aarch64 libtvm_runtime.so and libtvm_ffi.so (fetched on first use)."""
    return _unpack("tvm-runtime", dict(LIBRARIES), download)


def onnxruntime_dir(download: bool = True) -> Path:
    """A folder holding the aarch64 libonnxruntime.so of the host's onnxruntime version."""
    version = versions(("onnxruntime",))["onnxruntime"]
    return _unpack("onnxruntime", {"onnxruntime": f"onnxruntime/capi/libonnxruntime.so.{version}"}, download,
                   rename={"onnxruntime": ORT_LIBRARY})


def _unpack(kind: str, libraries: dict[str, str], download: bool, rename: dict[str, str] | None = None) -> Path:
    vers = versions(tuple(libraries))
    names = {dist: (rename or {}).get(dist, Path(inner).name) for dist, inner in libraries.items()}
    folder = cache_root() / kind / "-".join(f"{d}={v}" for d, v in sorted(vers.items()))
    if all((folder / name).is_file() for name in names.values()):
        return folder
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for dist, inner in libraries.items():
        wheel = _find_wheel(wheels, dist, vers[dist])
        if wheel is None:
            if not download:
                raise CrossToolchainError(f"the aarch64 {dist}=={vers[dist]} wheel is not in {wheels}")
            wheel = _download(wheels, dist, vers[dist])
        target = folder / names[dist]
        with zipfile.ZipFile(wheel) as z, tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            tmp.write(z.read(inner))
        os.chmod(tmp.name, 0o755)
        os.replace(tmp.name, target)
    return folder


def _find_wheel(wheels: Path, dist: str, version: str) -> Path | None:
    stem = dist.replace("-", "_")
    found = sorted(p for p in wheels.glob(f"{stem}-{version}-*aarch64*.whl"))
    return found[0] if found else None


def _download(wheels: Path, dist: str, version: str) -> Path:
    log.info("downloading the aarch64 %s==%s wheel (once, into %s)", dist, version, wheels)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "-d", str(wheels), f"{dist}=={version}"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(wheels, dist, version)
    if r.returncode or wheel is None:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise CrossToolchainError(f"cannot download the aarch64 {dist}=={version} wheel: {last}")
    return wheel


__all__ = ["ORT_LIBRARY", "onnxruntime_dir", "runtime_dir", "versions"]
