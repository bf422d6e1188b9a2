"""DEPLOY.md of a `tvm-arm64` artifact: how to run it on an aarch64 Linux board."""

from __future__ import annotations

DEPLOY_MD = """# Deploying on an aarch64 (ARM64) Linux board

This artifact was compiled by sparsec for `--target=arm64 --backend=tvm`:

- `model.so`: the model compiled by TVM {tvm_version} for `{target}`, with sparsec's N:M
  kernels (NEON) linked in as packed functions ({kernel_layers} layer(s) call
  `sparsec_nm_matmul`). Entry point: the Relax VM function `main`.
- `sparsec_tvm_runner`: a small aarch64 program that loads `model.so` and serves `main`
  (protocol in its source, kernels/tvm_arm/tvm_runner.cc of sparsec).
- `model.onnx`: the same model as ONNX with the kernel ops (reference only).

`main` takes, in this order: {inputs}.

## Python on the board

    pip install apache-tvm=={tvm_version} apache-tvm-ffi=={ffi_version}   # manylinux aarch64 wheels
    python3 - <<'PY'
    import numpy as np, tvm
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module("model.so"), tvm.cpu())
    inputs = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in {example}]
    print(vm["main"](*inputs))
    PY

## Without Python

Copy `libtvm_runtime.so` and `libtvm_ffi.so` out of those two wheels (they are zip files:
`tvm/lib/libtvm_runtime.so`, `tvm_ffi/lib/libtvm_ffi.so`) next to `sparsec_tvm_runner`
(its rpath is `$ORIGIN`) and `chmod +x sparsec_tvm_runner` (artifact files are written
without the executable bit); `./sparsec_tvm_runner model.so < requests > responses` then serves
`main`. Or link your own program against the two libraries and call
`vm_load_executable`, `vm_initialization(kDLCPU, 0, 2)` and `main` as the runner does.
The versions must be exactly these: the packed functions were built against tvm-ffi {ffi_version}.

## Checking

sparsec ran this very `model.so` under qemu-aarch64 user emulation at compile time and compared
it with the dense model on x86 (fidelity in manifest.json). Emulated time says nothing about a
board: measure latency there.
"""


def deploy_md(target: str, kernel_layers: int, inputs: list[tuple[str, list[int], str]],
              versions: dict[str, str]) -> bytes:
    """`inputs`: (name, shape with symbolic dims as 1, numpy dtype name) of each model input."""
    described = ", ".join(f"`{name}` {dtype}{list(shape)}" for name, shape, dtype in inputs)
    example = [(tuple(shape), dtype) for _, shape, dtype in inputs]
    return DEPLOY_MD.format(
        target=target, kernel_layers=kernel_layers, inputs=described, example=example,
        tvm_version=versions["apache-tvm"], ffi_version=versions["apache-tvm-ffi"],
    ).encode()
