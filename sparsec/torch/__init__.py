"""The way back to PyTorch: an artifact's decisions on the user's `nn.Module`, masks that
hold during training, semi-structured 2:4 export for CUDA, and gradual pruning."""

from sparsec.torch.apply import Applied, apply_artifact
from sparsec.torch.gradual import GradualPruner, cubic_sparsity
from sparsec.torch.masks import masks_of, plain_state_dict, remove_masks, set_mask
from sparsec.torch.semi_structured import semi_structured_unavailable, to_semi_structured

__all__ = [
    "Applied",
    "GradualPruner",
    "apply_artifact",
    "cubic_sparsity",
    "masks_of",
    "plain_state_dict",
    "remove_masks",
    "semi_structured_unavailable",
    "set_mask",
    "to_semi_structured",
]
