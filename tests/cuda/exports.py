"""Small BERT / GPT-2 / Llama / ViT (Hugging Face `transformers`, configs built offline,
random weights) and torchvision ResNet-18 (random weights) exported to ONNX by both of
torch's exporters with their default settings: static batch 1, the TorchScript exporter
(dynamo=False) and the dynamo exporter (dynamo=True, its optimizer on)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

FAMILIES = ("bert", "gpt2", "llama", "vit", "resnet18")
EXPORTERS = ("torchscript", "dynamo")
SEQ = 16


def build(family: str):  # noqa: ANN201  (module, example inputs, input names)
    """Two layers, hidden 64 (a multiple of the sparse tile 32, so 2:4 applies), FFN 128."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.manual_seed(0)
    if family == "resnet18":
        from sparsec.models_zoo.resnet18_tv import resnet18  # torchvision's, or its transcription

        return resnet18(num_classes=10).eval(), (torch.randn(1, 3, 32, 32),), ["input"]
    import transformers as tr

    ids = torch.randint(0, 128, (1, SEQ))
    mask = torch.ones_like(ids)
    if family == "bert":
        cfg = tr.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=64)
        return tr.BertModel(cfg).eval(), (ids, mask), ["input_ids", "attention_mask"]
    if family == "gpt2":
        # An explicit mask: without one the TorchScript exporter meets aten::diff.
        cfg = tr.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False,
                            bos_token_id=0, eos_token_id=0)
        return tr.GPT2Model(cfg).eval(), (ids, mask), ["input_ids", "attention_mask"]
    if family == "llama":
        cfg = tr.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                             use_cache=False)
        return tr.LlamaModel(cfg).eval(), (ids, mask), ["input_ids", "attention_mask"]
    if family == "vit":
        cfg = tr.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, num_channels=3)
        return tr.ViTModel(cfg, add_pooling_layer=False).eval(), (torch.randn(1, 3, 32, 32),), ["pixel_values"]
    raise ValueError(f"unknown family {family!r}")


def export(family: str, exporter: str, path: Path, opset: int | None = None) -> Path:
    """Write the family's ONNX file; opset None: the exporter's default (20 in torch 2.13)."""
    import torch

    module, args, names = build(family)

    class Plain(torch.nn.Module):  # one tensor out, not a ModelOutput; inputs by name
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            out = self.m(**dict(zip(names, xs, strict=True))) if family != "resnet18" else self.m(*xs)
            return out if isinstance(out, torch.Tensor) else out[0]

    extra = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(Plain().eval(), args, path, dynamo=False, input_names=names, **extra)
        elif exporter == "dynamo":
            torch.onnx.export(Plain().eval(), args, dynamo=True, input_names=names, verbose=False, **extra).save(path)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    return path
