"""Tiny Hugging Face models (random weights, from configs) exported to ONNX, shared per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

SEQ = 8
# name -> (activation, gated) the finder must report for every FFN of the export
EXPECTED = {
    "bert": ("gelu", False),
    "gpt2": ("gelu_tanh", False),
    "llama": ("silu", True),
    "t5": ("relu", False),
    "t5_gated": ("gelu_tanh", True),
    "vit": ("gelu", False),
}


def _build(name: str):  # noqa: ANN202  (a torch module)
    import torch
    import transformers as T

    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, num_attention_heads=2)
    if name == "bert":
        m = T.BertModel(T.BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, max_position_embeddings=32, **small))
    elif name == "gpt2":
        m = T.GPT2Model(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    elif name == "llama":
        m = T.LlamaModel(T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_key_value_heads=2,
                                       max_position_embeddings=32, **small))
    elif name in ("t5", "t5_gated"):
        proj = "gated-gelu" if name == "t5_gated" else "relu"
        m = T.T5EncoderModel(T.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                        feed_forward_proj=proj))
    elif name == "vit":
        return T.ViTModel(T.ViTConfig(hidden_size=32, intermediate_size=64, image_size=16, patch_size=8, **small)).eval()
    else:
        raise KeyError(name)

    class Encoder(torch.nn.Module):  # plain tensor in, last hidden state out (no cache objects)
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids).last_hidden_state

    return Encoder(m.eval()).eval()


def export(name: str, dynamo: bool, path: Path) -> Path:
    import warnings

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module = _build(name)
    args = (torch.randn(1, 3, 16, 16),) if name == "vit" else (torch.randint(0, 100, (1, SEQ)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, opset_version=18, **({"verbose": False} if dynamo else {}))
    return path


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory) -> Callable[[str, bool], Path]:  # noqa: ANN001
    """hf_export(name, dynamo) -> path of the ONNX file (exported once per session)."""
    folder = tmp_path_factory.mktemp("hf")
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, dynamo: bool = False) -> Path:
        key = (name, dynamo)
        if key not in cache:
            cache[key] = export(name, dynamo, folder / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx")
        return cache[key]

    return get
