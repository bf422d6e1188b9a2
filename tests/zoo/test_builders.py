from __future__ import annotations

import pytest
import torch

from sparsec.models_zoo import ZOO, get
from sparsec.models_zoo.bert import BASE, Bert
from sparsec.models_zoo.gpt import GPT, GPT_SMALL, LONG

from .conftest import SMALL_MODELS

# Parameter counts: a change here is a change of the reference models (and their benchmarks).
SMALL_PARAMS = {
    "mlp": 1_863_690,
    "resnet": 868_266,
    "mobilenet": 2_364_090,
    "bert": 3_431_936,
    "gpt": 3_687_936,
    "digits_cnn": 38_282,
    "shufflenet": 255_306,
    "densenet": 125_954,
    "convnext": 414_570,
    "efficientnet": 540_722,
    "vit": 1_803_850,
    "gpt_gqa": 2_765_312,
    "shufflenet_v2_tv": 2_278_604,  # torchvision's ShuffleNetV2 x1.0 has exactly this many
}


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_build_is_deterministic_and_runs(name: str) -> None:
    entry = get(name)
    rng_before = torch.get_rng_state()
    a, b = entry.build(), entry.build()
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not touch the global RNG"
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert _num_params(a) == SMALL_PARAMS[name]

    (x,) = entry.example_inputs(3)
    assert torch.equal(x, entry.example_inputs(3)[0])
    with torch.no_grad():
        y = a(x)
    assert y.shape[0] == 3
    assert torch.isfinite(y).all()
    # Non-degenerate: different inputs give clearly different outputs of sane magnitude.
    assert (y[0] - y[1]).abs().max() > 1e-3 * y.abs().max()
    assert 1e-2 < y.abs().max() < 1e3


@pytest.mark.parametrize("name", [n for n in SMALL_MODELS if n != "digits_cnn"])
def test_weights_are_not_degenerate(name: str) -> None:
    model = get(name).build()
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.numel() > 1:
            assert tensor.std() > 0, key


def test_resnet50_size() -> None:
    entry = ZOO["resnet50"]
    model = entry.build()
    assert _num_params(model) == 25_557_032
    assert entry.example_inputs(1)[0].shape == (1, 3, 224, 224)


@pytest.mark.parametrize(
    ("factory", "cfg", "expected"),
    # gpt_long: gpt's 3,687,936 plus 4096 - 64 more learned positions of 256.
    [(Bert, BASE, 108_595_200), (GPT, GPT_SMALL, 162_421_248), (GPT, LONG, 3_687_936 + (4096 - 64) * 256)],
)
def test_big_transformer_sizes(factory: type[torch.nn.Module], cfg: object, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init
        model = factory(cfg)
    assert _num_params(model) == expected
