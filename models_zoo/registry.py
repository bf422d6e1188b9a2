"""The typed registry of reference models: name -> how to build it and feed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import (
    bert,
    convnext,
    densenet,
    digits,
    efficientnet,
    gpt,
    gpt_gqa,
    mlp,
    mobilenet,
    resnet,
    shufflenet,
    shufflenet_tv,
    vit,
    vit_tv,
)


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
        "gpt_long",
        "GPT-style causal decoder at a 4096-token prefill (the gpt shapes: 4 layers, hidden 256, 4 heads "
        "of 64, FFN 1024, vocab 1000), for block-sparse attention",
        gpt.build_gpt_long,
        gpt.gpt_long_inputs,
        ("input_ids",),
        ("logits",),
        small=False,  # ~2 GiB and seconds per dense run: kept out of the per-model unit tests
    ),
    ZooModel(
        "digits_cnn",
        "CNN for sklearn 8x8 digits, trained deterministically in seconds (cached)",
        digits.train_digits_cnn,
        digits.digits_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "digits_mlp",
        "wide MLP 64-4096-4096-10 for sklearn 8x8 digits, trained deterministically (cached); "
        "68 MB of weights, so batch-1 inference streams them from memory (the demo's default)",
        digits.train_digits_mlp,
        digits.digits_inputs,
        ("input",),
        ("logits",),
        small=False,
    ),
    # Architecture families for channel cropping (coupling patterns of each family).
    ZooModel(
        "shufflenet",
        "ShuffleNetV2-style: channel split, depthwise branch, concat, channel shuffle, 3x64x64 input",
        shufflenet.build_shufflenet,
        shufflenet.shufflenet_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "densenet",
        "DenseNet-BC-style: pre-activation bottleneck layers with concatenated features, 3x64x64 input",
        densenet.build_densenet,
        densenet.densenet_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "convnext",
        "ConvNeXt-style: 7x7 depthwise, LayerNorm over channels, inverted MLP, layer scale, 3x64x64 input",
        convnext.build_convnext,
        convnext.convnext_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "efficientnet",
        "EfficientNet-style: MBConv with SiLU squeeze-excite, 3x3/5x5 depthwise, hard-swish head, 3x64x64 input",
        efficientnet.build_efficientnet,
        efficientnet.efficientnet_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "vit",
        "ViT: 4x4 patches of 3x32x32, class token, 4 pre-LN layers, hidden 192, 4 heads",
        vit.build_vit,
        vit.vit_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "gpt_gqa",
        "GPT-style decoder with grouped-query attention (8 query heads, 2 K/V heads), hidden 256, seq 64",
        gpt_gqa.build_gpt_gqa,
        gpt_gqa.gpt_gqa_inputs,
        ("input_ids",),
        ("logits",),
    ),
)

# Written out as torchvision writes them (torchvision is not installed here): the exports of
# real torchvision models differ from the families above in ways that broke crops before.
_ENTRIES += (
    ZooModel(
        "shufflenet_v2_tv",
        "torchvision ShuffleNetV2 x1.0 (chunk split, view/transpose/view shuffle), 3x64x64 input, 1000 classes",
        shufflenet_tv.build_shufflenet_v2_tv,
        shufflenet_tv.shufflenet_v2_tv_inputs,
        ("input",),
        ("logits",),
    ),
    ZooModel(
        "vit_b16_tv",
        "torchvision ViT-B/16 structure, 3 blocks (nn.MultiheadAttention, class token), 3x64x64 input",
        vit_tv.build_vit_b16_tv,
        vit_tv.vit_b16_tv_inputs,
        ("input",),
        ("logits",),
        small=False,
    ),
)

ZOO: dict[str, ZooModel] = {entry.name: entry for entry in _ENTRIES}

# The demo's embedded default: real (trained) weights, real data, and layers large enough
# for the sparse kernels to show a real gain (digits_cnn's layers all stay dense: 1.00x).
DEFAULT_MODEL = "digits_mlp"


def get(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}"
        ) from None
