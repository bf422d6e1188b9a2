"""An `ort-arm64` artifact run on aarch64 ONNX Runtime under qemu user emulation.

kernels/ort_arm/ort_runner.c, cross-compiled and linked against `libonnxruntime.so` of the
`onnxruntime` manylinux aarch64 wheel (the host's version, downloaded once by platform),
loads the artifact's `model.onnx` and its aarch64 `libsparsec_kernels.so`, as a board would.

One difference from a board: qemu-user shows the program the host's (x86) /proc/cpuinfo, on
which ONNX Runtime's aarch64 cpuinfo crashes at load; kernels/ort_arm/qemu_cpuinfo_shim.c
(LD_PRELOAD) shows it an aarch64 one (Neoverse-N1 lines, one per host CPU) instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sparsec.kernels import aarch64_runtime, cross_build
from sparsec.kernels.pipe_runner import PipeRunner


def emulated_session(model: Path, kernel_library: Path | None, inputs: Sequence[str], outputs: Sequence[str],
                     threads: int = 2) -> PipeRunner:
    """A runner of `model` (feeds in the order of `inputs`) under qemu; kernel_library None: plain ONNX."""
    cross_build.require(need_qemu=True)
    ort_dir = aarch64_runtime.onnxruntime_dir()
    runner = cross_build.ort_runner(ort_dir)
    argv = [str(runner), str(model), str(kernel_library or ""), str(threads), *inputs, "--", *outputs]
    guest = {"LD_PRELOAD": str(cross_build.qemu_cpuinfo_shim()), "SPARSEC_FAKE_CPUINFO": str(_fake_cpuinfo())}
    return PipeRunner(argv, lib_dirs=[ort_dir], guest_env=guest)


_CPU = ("BogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
        "asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\n"
        "CPU part\t: 0xd0c\nCPU revision\t: 1\n\n")


def _fake_cpuinfo() -> Path:
    """An aarch64 /proc/cpuinfo with one entry per CPU the host's /sys lists as present."""
    count = _present_cpus()
    path = cross_build.cache_root() / f"cpuinfo-neoverse-n1-{count}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text("".join(f"processor\t: {i}\n{_CPU}" for i in range(count)))
        os.replace(tmp, path)
    return path


def _present_cpus() -> int:
    try:
        text = Path("/sys/devices/system/cpu/present").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count = max(count, int(hi or lo) + 1)
    return count


__all__ = ["emulated_session"]
