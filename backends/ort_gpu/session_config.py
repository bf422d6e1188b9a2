"""`ort_session.json`: the providers and options a user passes to onnxruntime-gpu unchanged.

TensorRT picks 2:4 sparse tactics only when asked (`trt_sparsity_enable`) and only for
weights that hold the pattern along the reduction axis as plain dense tensors, which is how
`legalize-dense` stores them. The CUDA EP is the fallback for what TensorRT does not take
(dense, no sparse tensor cores), the CPU EP last.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "sparsec.ort_session/1"


def session_config(arch: str, precision: str, sparse_layers: list[str], dense_layers: dict[str, str]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": "model.onnx",
        "providers": [
            [
                "TensorrtExecutionProvider",
                {
                    "trt_sparsity_enable": True,
                    "trt_fp16_enable": precision == "float16",
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": "trt_cache",
                },
            ],
            ["CUDAExecutionProvider", {}],
            ["CPUExecutionProvider", {}],
        ],
        "usage": (
            "import json, onnxruntime as ort; cfg = json.load(open('ort_session.json')); "
            "sess = ort.InferenceSession('model.onnx', providers=[(n, o) for n, o in cfg['providers']])"
        ),
        "target": {"arch": arch, "precision": precision, "accumulate": "float32"},
        "sparse_tensor_core_layers": sparse_layers,
        "dense_layers": dense_layers,
    }
