"""BERT-base and GPT-2 small decode, 2:4 vs dense, on a CUDA GPU; prints one JSON line per case.

Run by bench/gpu_check.sh on the device machine. What runs depends on what that machine has;
every case that cannot run prints a JSON line with "skipped": true and the reason, and the
script exits 0, so one run reports all it could:

- `torch-sp24` (needs torch with CUDA, transformers, nvcc): the Hugging Face model (config
  built offline, random weights, fp16 on the GPU) with every Linear/Conv1D weight pruned 2:4
  along K. Dense: those pruned weights through cuBLAS (the model as is). Sparse: the same
  model with each of those layers replaced by sparsec's mma.sp kernel on the packed weights
  (kernels/cuda_runtime.py); everything else (attention, LayerNorm, GELU) is torch's in both.
  BERT-base: batch 8 x 128 tokens (GEMM path). GPT-2: one decode step at batch 1 after a
  128-token prefill, the KV cache cropped back to 128 after each step (GEMV path).
  Checked first: the sparse model's output against the dense one's (cosine, max relative error).
- `ort-gpu artifact` (needs onnxruntime with the CUDA or TensorRT EP) and `tvm-cuda artifact`
  (needs apache-tvm with its CUDA runtime): detected and reported as skipped when missing, as
  they are on the device image of this workplace (onnxruntime there is the CPU build; apache-tvm
  is not installed and, at 305 MB installed, does not fit the 64 MiB a run may carry). Timing
  those artifacts is not implemented here: it was written without a machine to run it on.

Timing: CUDA events, median of 30 runs after 5 warm-ups, one process, one stream.
"""

from __future__ import annotations

import json
import sys
from typing import Any

BENCH = "gpu_models"


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": BENCH, **fields}), flush=True)


def skip(case: str, reason: str) -> None:
    emit(case=case, skipped=True, reason=reason)


def _time(torch, fn) -> float:  # noqa: ANN001
    from sparsec.bench import cuda_median_ms

    return cuda_median_ms(torch, fn, runs=30, warmup=5)


def sparsify(torch: Any, lib: Any, model: Any) -> tuple[list[tuple[Any, str, Any]], int]:
    """Prune every Linear/Conv1D weight 2:4 along K in place; return the replacements that
    put sparsec's kernel on each ((parent, attribute, sparse module)) and the layer count."""
    import numpy as np

    from sparsec.kernels import prune_nm
    from sparsec.kernels.packing_sparse_tc import pack_sparse_tc

    class Sp24(torch.nn.Module):
        def __init__(self, w_kc: np.ndarray, bias: Any) -> None:
            super().__init__()
            self.packed = pack_sparse_tc(w_kc, "float16")
            self.weights = lib.to_device(self.packed)
            self.bias = bias

        def forward(self, x: Any) -> Any:
            lead = x.shape[:-1]
            y = lib.matmul(self.packed, self.weights, x.reshape(-1, x.shape[-1]).contiguous())
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*lead, self.packed.cols)

    swaps = []
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            kind = type(child).__name__
            if kind not in ("Linear", "Conv1D") or attr == "lm_head":  # GPT-2's head is tied to the embedding
                continue
            w = child.weight.detach().float().cpu().numpy()
            w_kc = w.T if kind == "Linear" else w  # Linear stores [out, in]; HF Conv1D [in, out]
            if w_kc.shape[0] % 64:  # the kernel's K tile
                continue
            pruned = prune_nm(np.ascontiguousarray(w_kc), 2, 4)
            with torch.no_grad():
                child.weight.copy_(torch.from_numpy(pruned.T if kind == "Linear" else pruned))
            swaps.append((parent, attr, Sp24(pruned, child.bias)))
    return swaps, len(swaps)


def _apply(swaps: list, sparse: bool, originals: dict) -> None:
    for parent, attr, module in swaps:
        key = (id(parent), attr)
        originals.setdefault(key, getattr(parent, attr))
        setattr(parent, attr, module if sparse else originals[key])


def _compare(torch: Any, dense: Any, sparse: Any) -> dict:
    d, s = dense.float().flatten(), sparse.float().flatten()
    cos = float(torch.nn.functional.cosine_similarity(d, s, dim=0))
    rel = float((d - s).abs().max() / d.abs().max().clamp_min(1e-6))
    return {"cosine_sparse_vs_dense": round(cos, 6), "max_rel_err": round(rel, 5)}


def torch_case(torch: Any, lib: Any, family: str) -> None:
    import transformers as tr

    torch.manual_seed(0)
    if family == "bert-base":
        model = tr.BertModel(tr.BertConfig()).eval().half().cuda()
        ids = torch.randint(0, 30522, (8, 128), device="cuda")

        def step() -> Any:
            return model(input_ids=ids).last_hidden_state
        shape = "batch 8 x 128 tokens"
    else:
        model = tr.GPT2LMHeadModel(tr.GPT2Config()).eval().half().cuda()
        ids = torch.randint(0, 50257, (1, 129), device="cuda")
        with torch.inference_mode():
            cache = model(input_ids=ids[:, :128], use_cache=True).past_key_values
        if not hasattr(cache, "crop"):
            skip(f"torch-sp24 {family}", f"transformers {tr.__version__}: KV cache has no crop(); decode step not timed")
            return

        def step() -> Any:
            out = model(input_ids=ids[:, 128:], past_key_values=cache, use_cache=True).logits
            cache.crop(-1)  # drop the token just appended: every step sees 128 cached tokens
            return out
        shape = "batch 1, one token after a 128-token prefill (KV cache)"
    swaps, layers = sparsify(torch, lib, model)
    originals: dict = {}
    with torch.inference_mode():
        _apply(swaps, False, originals)
        ref = step().clone()
        dense_ms = _time(torch, step)
        _apply(swaps, True, originals)
        got = step().clone()
        sparse_ms = _time(torch, step)
    emit(case=f"torch-sp24 {family}", shape=shape, layers_2_4=layers, dtype="float16",
         dense_ms=round(dense_ms, 4), sparse_ms=round(sparse_ms, 4), speedup=round(dense_ms / sparse_ms, 3),
         **_compare(torch, ref, got), gpu=torch.cuda.get_device_name())


def main() -> int:
    try:
        import torch
    except ImportError:
        for case in ("torch-sp24 bert-base", "torch-sp24 gpt2-decode"):
            skip(case, "torch is not installed")
        torch = None
    if torch is not None and not torch.cuda.is_available():
        for case in ("torch-sp24 bert-base", "torch-sp24 gpt2-decode"):
            skip(case, "no CUDA device visible to torch")
    elif torch is not None:
        try:
            import transformers  # noqa: F401

            from sparsec.kernels import cuda_build
            from sparsec.kernels.cuda_runtime import Sp24Library

            major, minor = torch.cuda.get_device_capability()
            arch = "sm_90" if major >= 9 else ("sm_89" if (major, minor) == (8, 9) else "sm_80")
            lib = Sp24Library(arch) if cuda_build.find_nvcc() else None
        except ImportError as e:
            lib, why = None, f"missing Python package: {e.name}"
        else:
            why = "nvcc not found: the kernel library cannot be built"
        if lib is None:
            for case in ("torch-sp24 bert-base", "torch-sp24 gpt2-decode"):
                skip(case, why)
        else:
            for family in ("bert-base", "gpt2-decode"):
                try:
                    torch_case(torch, lib, family)
                except Exception as e:  # report and go on: one JSON line per case
                    skip(f"torch-sp24 {family}", f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
        reason = ("onnxruntime has the " + " and ".join(gpu) + ", but timing the ort-gpu artifact is not implemented"
                  if gpu else f"onnxruntime {ort.__version__} here has no CUDA/TensorRT EP (providers: {', '.join(providers)})")
    except ImportError:
        reason = "onnxruntime is not installed"
    skip("ort-gpu artifact (bert-base, gpt2-decode)", reason)
    try:
        import tvm

        has_cuda = bool(tvm.cuda(0).exist)
        reason = ("apache-tvm sees a CUDA device, but timing the tvm-cuda artifact is not implemented" if has_cuda
                  else "apache-tvm here has no CUDA runtime or device")
    except ImportError:
        reason = "apache-tvm is not installed (not in the image; 305 MB installed, over the 64 MiB a run may carry)"
    skip("tvm-cuda artifact (bert-base, gpt2-decode)", reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
