"""Declares the compiled kernel library; all package metadata lives in pyproject.toml.

The kernels are a plain C shared library (loaded with ctypes by sparsec.kernels._native).
ISA-specific files select their instruction set with `#pragma GCC target`, so one set of
flags builds every path and dispatch happens at run time. `optional=True`: a machine
without a C compiler still installs sparsec; the kernels then raise KernelUnavailableError.
"""

import glob
import platform

from setuptools import Extension, setup

_sources = sorted(glob.glob("kernels/src/*.c"))
_flags = ["-O3", "-std=c11", "-pthread", "-fno-strict-aliasing"]
if platform.machine() in ("x86_64", "AMD64"):
    _flags.append("-mtune=generic")

setup(
    ext_modules=[
        Extension(
            "sparsec.kernels._sparsec_kernels",
            sources=_sources,
            depends=glob.glob("kernels/src/*.h"),
            extra_compile_args=_flags,
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
