"""Fixtures for the attention tests: tiny Hugging Face transformer families (random weights,
offline) exported with the legacy and the dynamo exporter (the matcher's corpus)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx
import pytest

FAMILIES = ("bert", "gpt2", "llama", "t5", "vit", "whisper")
SEQ = 16


def build(family: str):
    """(module, example inputs as a tuple, input names) for one tiny random-weight model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers as tr

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, SEQ))
    common = {"attn_implementation": "sdpa"}
    if family == "bert":
        cfg = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, **common)
        return tr.BertModel(cfg).eval(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
    if family == "gpt2":
        cfg = tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False,
                            bos_token_id=0, eos_token_id=0, **common)
        # An explicit mask: without one the legacy exporter meets aten::diff (packed-sequence check).
        return tr.GPT2Model(cfg).eval(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
    if family == "llama":
        cfg = tr.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                             use_cache=False, **common)
        return tr.LlamaModel(cfg).eval(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
    if family == "t5":
        cfg = tr.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          use_cache=False, **common)
        return tr.T5EncoderModel(cfg).eval(), (ids,), ["input_ids"]
    if family == "vit":
        cfg = tr.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, num_channels=3, **common)
        return tr.ViTModel(cfg, add_pooling_layer=False).eval(), (torch.randn(1, 3, 32, 32),), ["pixel_values"]
    if family == "whisper":
        cfg = tr.WhisperConfig(vocab_size=100, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                               decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                               num_mel_bins=8, max_source_positions=16, use_cache=False,
                               pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1, **common)
        enc = tr.WhisperModel(cfg).get_encoder().eval()
        return enc, (torch.randn(1, 8, 32),), ["input_features"]
    raise ValueError(family)


def export(family: str, exporter: str, opset: int = 18) -> onnx.ModelProto:
    """The family's ONNX model from `exporter` ('legacy' or 'dynamo'), static batch 1."""
    import torch

    module, args, names = build(family)

    class Plain(torch.nn.Module):  # tensors out, not a ModelOutput
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, *xs):
            return self.m(**dict(zip(names, xs, strict=True)))[0]  # by name: GPT-2's 2nd arg is the cache

    wrapped = Plain().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(wrapped, args, buf, dynamo=False, opset_version=opset, input_names=names)
            return onnx.load_from_string(buf.getvalue())
        prog = torch.onnx.export(wrapped, args, dynamo=True, opset_version=opset, input_names=names,
                                 optimize=True, verbose=False)
        return prog.model_proto


@pytest.fixture(scope="session")
def hf_export(tmp_path_factory):
    """(family, exporter) -> path of the exported .onnx, each exported once per session."""
    folder = tmp_path_factory.mktemp("hf_exports")

    def get(family: str, exporter: str) -> Path:
        path = folder / f"{family}_{exporter}.onnx"
        if not path.exists():
            onnx.save(export(family, exporter), path)
        return path

    return get
