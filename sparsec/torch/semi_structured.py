"""2:4 weights as torch's semi-structured sparse tensors (cuSPARSELt / CUTLASS on CUDA).

`torch.sparse.to_sparse_semi_structured` runs only on CUDA GPUs of compute capability 8.0+
and only for Linear weights; everything else raises one clear `UnsupportedError`.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsec.errors import UnsupportedError
from sparsec.torch.masks import remove_masks


def semi_structured_unavailable() -> str | None:
    """Why semi-structured sparsity cannot be used here, or None when it can."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return "torch.sparse.to_sparse_semi_structured needs a CUDA GPU and none is available"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"semi-structured sparsity needs compute capability 8.0+, this GPU has {major}.{minor}"
    return None


def is_2_4(w: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along the input dimension has at most 2 nonzeros."""
    if w.dim() != 2 or w.shape[1] % 4:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def to_semi_structured(module: nn.Module) -> list[str]:
    """Replace every 2:4 `nn.Linear` weight on CUDA by a semi-structured sparse tensor, in place.

    Masks are baked first (`remove_masks`). Returns the names of the converted Linear modules;
    raises `UnsupportedError` where the hardware or torch cannot (CPU, old GPU, old torch).
    """
    reason = semi_structured_unavailable()
    if reason is not None:
        raise UnsupportedError(f"cannot export semi-structured 2:4 weights: {reason}")
    remove_masks(module)
    done = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and m.weight.is_cuda and is_2_4(m.weight.detach()):
            m.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
            done.append(name)
    if not done:
        raise UnsupportedError("no 2:4 nn.Linear weight on a CUDA device to convert (move the module with .cuda().half() first)")
    return done
