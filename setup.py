"""Declares the compiled kernel library and the package list; the rest lives in pyproject.toml.

Packages are discovered (every folder with an `__init__.py` below the mapped roots), so a
new backend, target or pass family is a new folder and nothing else to edit.

The kernels are a plain C shared library (loaded with ctypes by sparsec.kernels._native).
ISA-specific files select their instruction set with `#pragma GCC target`, so one set of
flags builds every path and dispatch happens at run time. `optional=True`: a machine
without a C compiler still installs sparsec; the kernels then raise KernelUnavailableError.
"""

import glob
import os
import platform

from setuptools import Extension, setup

# Import name -> folder; must agree with [tool.setuptools] package-dir in pyproject.toml.
PACKAGE_DIRS = {
    "sparsec": "sparsec", "sparsec.passes": "passes", "sparsec.backends": "backends",
    "sparsec.kernels": "kernels", "sparsec.models_zoo": "models_zoo",
}


def packages(root: str = os.path.dirname(os.path.abspath(__file__))) -> list[str]:
    found = []
    for package, folder in PACKAGE_DIRS.items():
        base = os.path.join(root, folder)
        for here, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) and d != "tests")
            if "__init__.py" in files:
                rel = os.path.relpath(here, base)
                found.append(package if rel == "." else ".".join([package, *rel.split(os.sep)]))
    return sorted(found)


_sources = sorted(glob.glob("kernels/src/*.c"))
_flags = ["-O3", "-std=c11", "-pthread", "-fno-strict-aliasing"]
if platform.machine() in ("x86_64", "AMD64"):
    _flags.append("-mtune=generic")

if __name__ == "__main__":  # setuptools runs this file as __main__; tests import `packages`
    setup(
        packages=packages(),
        ext_modules=[
            Extension(
                "sparsec.kernels._sparsec_kernels",
                sources=_sources,
                depends=glob.glob("kernels/src/*.h") + glob.glob("kernels/src/*.inc"),
                extra_compile_args=_flags,
                extra_link_args=["-pthread"],
                optional=True,
            )
        ],
    )
