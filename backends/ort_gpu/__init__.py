"""ONNX Runtime GPU backend (`ort-gpu`): standard ONNX for onnxruntime-gpu's TensorRT/CUDA EPs."""

from sparsec.backends.ort_gpu.backend import OrtGpuBackend

__all__ = ["OrtGpuBackend"]
