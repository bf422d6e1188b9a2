"""DEPLOY.md of an `ort-arm64` artifact: how to run it on an aarch64 Linux board."""

from __future__ import annotations

DEPLOY_MD = """# Deploying on an aarch64 (ARM64) Linux board

This artifact was compiled by sparsec for `--target=arm64 --backend=ort`:

- `model.onnx`: the model; {kernel_layers} N:M layer(s) run as the custom op
  `com.sparsec.kernels.NMSparseMatMul` (the rest is standard ONNX).
- `libsparsec_kernels.so`: the kernel op library, built for `aarch64-linux-gnu` (NEON;
  glibc >= 2.17, needs only libc, libm and pthreads). It exports `RegisterCustomOps`.

## Python

    pip install onnxruntime   # the manylinux aarch64 wheel
    python3 - <<'PY'
    import numpy as np, onnxruntime as ort
    opts = ort.SessionOptions()
    opts.register_custom_ops_library("./libsparsec_kernels.so")
    sess = ort.InferenceSession("model.onnx", opts, providers=["CPUExecutionProvider"])
    feeds = {{i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in sess.get_inputs()}}
    print([o.shape for o in sess.run(None, feeds)])
    PY

## C / C++

Call `OrtApi::RegisterCustomOpsLibrary_V2(session_options, "libsparsec_kernels.so")` (or
`AddCustomOpDomain` after calling `RegisterCustomOps` yourself) before creating the session.

## Checking

Compare outputs with `sparsec run` of the same artifact on x86 (same kernel sources, x86 ISA):
fp32 results agree to about 1e-5 relative. Latency on the board is yours to measure: nothing
in this artifact was timed on ARM hardware.
"""


def deploy_md(kernel_layers: int) -> bytes:
    return DEPLOY_MD.format(kernel_layers=kernel_layers).encode()
