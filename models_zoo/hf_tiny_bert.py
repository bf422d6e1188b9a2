"""A tiny Hugging Face BERT (transformers BertConfig, random weights) exported to ONNX offline.

Not a registered zoo model (it needs transformers): used by the arm64 tests and
bench/arm64_qemu_bench.py as the small real-architecture transformer."""

from __future__ import annotations

import warnings

import onnx

SEQ = 16


def export_tiny_bert(hidden: int = 128, layers: int = 2, seed: int = 0) -> onnx.ModelProto:
    """BertModel's last hidden state for (input_ids, attention_mask) of shape [1, SEQ]; static batch 1.
    hidden=128 with a 4x FFN: attention weights of 16384 and FFN weights of 65536 parameters, so
    the FFN layers reach the `ort` kernel threshold (65536) and all reach tvm-arm64's (4096)."""
    import torch
    import transformers as tr

    torch.manual_seed(seed)
    cfg = tr.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=4 * hidden, max_position_embeddings=64, attn_implementation="sdpa")
    bert = tr.BertModel(cfg, add_pooling_layer=False).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids = torch.randint(0, 100, (1, SEQ))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(LastHidden().eval(), (ids, torch.ones_like(ids)), dynamo=True, opset_version=18,
                                 input_names=["input_ids", "attention_mask"], optimize=True, verbose=False)
    return prog.model_proto
