from __future__ import annotations

import pytest

from sparsec.models_zoo import DEFAULT_MODEL, ZOO, UnknownModelError, ZooModel, get

EXPECTED = {
    "mlp",
    "resnet",
    "resnet50",
    "mobilenet",
    "bert",
    "bert_base",
    "gpt",
    "gpt_small",
    "gpt_long",
    "digits_cnn",
    "digits_mlp",
    # architecture families for channel cropping
    "shufflenet",
    "densenet",
    "convnext",
    "efficientnet",
    "vit",
    "gpt_gqa",
    # torchvision's own structures, written out
    "shufflenet_v2_tv",
    "vit_b16_tv",
}


def test_zoo_has_the_reference_models() -> None:
    assert set(ZOO) == EXPECTED
    assert DEFAULT_MODEL in ZOO
    for name, entry in ZOO.items():
        assert isinstance(entry, ZooModel)
        assert entry.name == name
        assert entry.input_names and entry.output_names and entry.description


def test_get_returns_entry() -> None:
    assert get("mlp") is ZOO["mlp"]


def test_get_unknown_lists_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        get("no-such-model")
    assert isinstance(info.value, UnknownModelError)
    message = str(info.value)
    assert "no-such-model" in message
    assert all(name in message for name in ZOO)
