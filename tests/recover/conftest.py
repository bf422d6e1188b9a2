"""Tiny real exports for the recovery tests: Hugging Face BERT and GPT-2 from configs (random
weights, offline, dynamo exporter) and a small MLP with biases for crops."""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx_ir as ir
import pytest

from sparsec.calib.data import CalibrationData
from sparsec.testing import make_model

SEQ = 16


def hf_export(family: str) -> ir.Model:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers as tr

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, SEQ))
    mask = torch.ones_like(ids)
    mask[1, SEQ // 2 :] = 0  # one padded sentence: the attention-mask arithmetic runs for real
    if family == "bert":
        cfg = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
        module = tr.BertModel(cfg)
    else:
        cfg = tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, use_cache=False,
                            bos_token_id=0, eos_token_id=0, attn_implementation="eager")
        module = tr.GPT2Model(cfg)
    module.eval()

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
            return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(Plain().eval(), (ids, mask), dynamo=True, opset_version=18,
                                 input_names=["input_ids", "attention_mask"], optimize=True, verbose=False)
    return ir.serde.deserialize_model(prog.model_proto)


@pytest.fixture(scope="session")
def hf_models() -> dict[str, ir.Model]:
    cache: dict[str, ir.Model] = {}

    class Get(dict):
        def __missing__(self, key: str) -> ir.Model:
            cache[key] = hf_export(key)
            return cache[key]

    return Get()


def token_feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, (n, SEQ)).astype(np.int64)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


MLP_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
mlp (float[N, 16] x) => (float[N, 8] y) {
    h = MatMul(x, w1)
    hb = Add(h, b1)
    r = Relu(hb)
    h2 = MatMul(r, w2)
    y = Add(h2, b2)
}
"""


def correlated(n: int, k: int, seed: int) -> np.ndarray:
    fixed = np.random.default_rng(12345)
    mix = fixed.standard_normal((k, k)) * (fixed.random(k) ** 2)[None, :]
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) @ mix + 0.1 * rng.standard_normal((n, k))).astype(np.float32)


@pytest.fixture
def mlp() -> ir.Model:
    rng = np.random.default_rng(0)
    return make_model(
        MLP_TEXT,
        w1=(rng.standard_normal((16, 64)) / 4).astype(np.float32),
        b1=(0.5 + 0.1 * rng.standard_normal(64)).astype(np.float32),
        w2=(rng.standard_normal((64, 8)) / 8).astype(np.float32),
        b2=(0.1 * rng.standard_normal(8)).astype(np.float32),
    )


@pytest.fixture
def mlp_calib() -> CalibrationData:
    return CalibrationData({"x": correlated(256, 16, seed=1)}, batch_size=32)
