"""The typed registry of reference models: name -> how to build it and feed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import bert, digits, gpt, mlp, mobilenet, resnet


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    build: Callable[[], torch.nn.Module]  # eval mode, deterministic weights
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]  # batch size -> inputs
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool = True
    small: bool = True  # small enough for unit tests and single-file ONNX export in seconds


class UnknownModelError(KeyError):
    """Raised by :func:`get` for a name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0])


_ENTRIES = (
    ZooModel(
        "mlp",
        "MLP 784-1024-1024-10 with ReLU (MNIST-shaped input)",
        mlp.build_mlp,
        mlp.mlp_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "resnet",
        "small ResNet, bottleneck blocks [2,2,2], BatchNorm, 3x64x64 input, 10 classes",
        resnet.build_resnet,
        resnet.resnet_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "resnet50",
        "ResNet-50 (v1.5), bottleneck [3,4,6,3], 3x224x224 input, 1000 classes",
        resnet.build_resnet50,
        resnet.resnet50_inputs,
        ("input",),
        ("logits",),
        small=False,
    ),
    ZooModel(
        "mobilenet",
        "MobileNetV2-style, inverted residuals with depthwise convs, ReLU6, SE, 3x64x64 input",
        mobilenet.build_mobilenet,
        mobilenet.mobilenet_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "bert",
        "BERT-style encoder, 4 layers, hidden 256, 4 heads, FFN 1024, vocab 1000, seq 64",
        bert.build_bert,
        bert.bert_inputs,
        ("input_ids",),
        ("last_hidden_state",),
    ),
    ZooModel(
        "bert_base",
        "BERT-base-sized encoder, 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522, seq 128",
        bert.build_bert_base,
        bert.bert_base_inputs,
        ("input_ids",),
        ("last_hidden_state",),
        small=False,
    ),
    ZooModel(
        "gpt",
        "GPT-style causal decoder, pre-LN, 4 layers, hidden 256, 4 heads, vocab 1000, seq 64",
        gpt.build_gpt,
        gpt.gpt_inputs,
        ("input_ids",),
        ("logits",),
    ),
    ZooModel(
        "gpt_small",
        "GPT-2-small-sized decoder, 12 layers, hidden 768, 12 heads, vocab 50304, seq 128",
        gpt.build_gpt_small,
        gpt.gpt_small_inputs,
        ("input_ids",),
        ("logits",),
        small=False,
    ),
    ZooModel(
        "digits_cnn",
        "CNN for sklearn 8x8 digits, trained deterministically in seconds (cached)",
        digits.train_digits_cnn,
        digits.digits_inputs,
        ("input",),
        ("logits",),
    ),
)

ZOO: dict[str, ZooModel] = {entry.name: entry for entry in _ENTRIES}

# The demo's embedded default: real (trained) weights, real data, and an accuracy to check.
DEFAULT_MODEL = "digits_cnn"


def get(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}"
        ) from None
