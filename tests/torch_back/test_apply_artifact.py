"""sparsec.torch: an artifact's crops, values and masks back on the original nn.Module.

Real exports from both torch exporters (dynamo via `from_torch`; the legacy TorchScript one
via `torch.onnx.export(dynamo=False)`), real compiles, ONNX Runtime as the reference.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sparsec.artifact import write_artifact
from sparsec.capture import from_onnx, from_torch
from sparsec.compiler import CompileOptions, compile_model
from sparsec.errors import ArtifactMismatchError, SparsecError, UnsupportedError
from sparsec.models_zoo.resnet18_tv import ResNet, resnet18
from sparsec.nm_pattern import nm_violations
from sparsec.pm.presets import preset_pipeline
from sparsec.torch import (
    apply_artifact,
    masks_of,
    plain_state_dict,
    remove_masks,
    to_semi_structured,
)
from sparsec.torch.semi_structured import semi_structured_unavailable

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _resnet(layers: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = resnet18(num_classes=5) if layers == (2, 2, 2, 2) else ResNet(layers, num_classes=5)
    with torch.no_grad():  # running stats that are not 0/1, so BatchNorm matters
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _compile(model, out: Path) -> Path:
    options = CompileOptions(pipeline=preset_pipeline(crop=0.3, sparsity="2:4", prune_all=True), bench=False, tune=False)
    write_artifact(out, compile_model(model, options).files)
    return out


def _legacy_export(m: torch.nn.Module, path: Path) -> Path:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # No constant folding: the legacy exporter otherwise folds BatchNorm into Conv, and the
        # folded weights are no state_dict entry.
        torch.onnx.export(m, (X[:1],), buf, dynamo=False, input_names=["x"], do_constant_folding=False)
    path.write_bytes(buf.getvalue())
    return path


R10 = (1, 1, 1, 1)  # torchvision's ResNet with one block per stage: the fast tests' model
R18 = (2, 2, 2, 2)


@pytest.fixture(scope="module")
def dynamo_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(from_torch(_resnet(R10), (X[:1],)), tmp_path_factory.mktemp("r10d") / "art")


@pytest.fixture(scope="module")
def legacy_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("r10")
    return _compile(from_onnx(_legacy_export(_resnet(R10), root / "m.onnx")), root / "art")


def _ort(artifact: Path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _masked_nonzeros(m: torch.nn.Module) -> int:
    return sum(int((m.get_submodule(k.rpartition(".")[0]).weight[~mask] != 0).sum()) for k, mask in masks_of(m).items())


def _check_round_trip(layers: tuple[int, ...], artifact: Path, masked: int) -> torch.nn.Module:
    m = _resnet(layers)
    applied = apply_artifact(m, artifact)
    # Deduplicated BatchNorm constants were placed by graph position, not by name.
    assert applied.mapping["layer1.0.bn1.weight"] == "bn1.weight"
    assert m.layer1[0].bn1.weight.shape[0] < 64 and m.conv1.out_channels == m.layer1[0].bn1.num_features
    assert len(applied.masked) == masked and "conv1.weight" not in applied.masked  # 3 input channels: skipped
    with torch.no_grad():
        np.testing.assert_allclose(m(X).numpy(), _ort(artifact, X), rtol=1e-4, atol=1e-5)
    w = m.layer2[0].conv1.weight.detach().numpy()
    assert nm_violations(w, 2, 4, axis=1) == 0 and np.count_nonzero(w) <= w.size // 2

    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m.train()
    opt.zero_grad()
    m(X).square().mean().backward()
    opt.step()
    assert _masked_nonzeros(m) == 0
    return m


@pytest.mark.slow
def test_resnet18_bar(tmp_path: Path) -> None:
    """Issue #15's bar: torchvision ResNet-18, --crop=0.3 --sparsity=2:4, back as an nn.Module."""
    artifact = _compile(from_torch(_resnet(R18), (X[:1],)), tmp_path / "art")
    _check_round_trip(R18, artifact, masked=20)


def test_dynamo_outputs_equal_artifact_and_masks_survive_training(dynamo_artifact: Path) -> None:
    m = _check_round_trip(R10, dynamo_artifact, masked=12)
    assert nm_violations(m.layer2[0].conv1.weight.detach().numpy(), 2, 4, axis=1) == 0

    # Baked back to plain keys: the state_dict loads into a module with the cropped shapes.
    state = plain_state_dict(m)
    assert "layer2.0.conv1.weight" in state and not any("parametrizations" in k for k in state)
    remove_masks(m)
    assert not masks_of(m) and set(m.state_dict()) == set(state)


def test_legacy_exporter_artifact_applies(legacy_artifact: Path) -> None:
    m = _resnet(R10)
    applied = apply_artifact(m, legacy_artifact)
    assert applied.cropped and applied.masked
    assert any(k != v for k, v in applied.mapping.items())  # the legacy exporter deduplicates too
    with torch.no_grad():
        np.testing.assert_allclose(m(X[:1]).numpy(), _ort(legacy_artifact, X[:1]), rtol=1e-4, atol=1e-5)


def test_other_weights_are_refused(dynamo_artifact: Path) -> None:
    m = _resnet(R10, seed=7)  # same architecture, different weights
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ArtifactMismatchError, match="does not match this module") as e:
        apply_artifact(m, dynamo_artifact)
    assert "\n" not in str(e.value)
    after = m.state_dict()  # refused before anything changed: no crop, no mask, same values
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_other_architecture_is_refused(legacy_artifact: Path) -> None:
    with pytest.raises(ArtifactMismatchError, match="does not match this module"):
        apply_artifact(_resnet(R18), legacy_artifact)  # the artifact is of a ResNet-10


def test_missing_keys_are_refused(dynamo_artifact: Path) -> None:
    m = _resnet(R10)
    m.head = m.fc  # the classifier under another name: 'fc.weight' is no longer a key
    del m.fc
    with pytest.raises(ArtifactMismatchError, match="fc.weight"):
        apply_artifact(m, dynamo_artifact)


def test_folded_legacy_export_is_refused(tmp_path: Path) -> None:
    """A default legacy export folds BatchNorm into the convolutions: no key holds those values."""
    m = _resnet(R10)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (X[:1],), buf, dynamo=False, input_names=["x"])
    (tmp_path / "m.onnx").write_bytes(buf.getvalue())
    with pytest.raises(ArtifactMismatchError, match="'conv1.weight' differs"):
        apply_artifact(m, (from_onnx(tmp_path / "m.onnx"), {"decisions": []}))


def test_unsupported_decision_kinds_are_named(dynamo_artifact: Path) -> None:
    from sparsec.ir.io import load_model

    manifest = json.loads((dynamo_artifact / "manifest.json").read_text())
    manifest["decisions"].append({"pass": "moefy-ffn", "layer": "fc", "decision": "moe 2/8"})
    model = load_model(dynamo_artifact / "model.onnx", check_ops=False)
    with pytest.raises(UnsupportedError, match="moefy-ffn: moe 2/8"):
        apply_artifact(_resnet(R10), (model, manifest))


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(SparsecError, match="not a sparsec artifact"):
        apply_artifact(_resnet(R10), tmp_path)


@pytest.mark.skipif(semi_structured_unavailable() is None, reason="semi-structured sparsity is available here")
def test_semi_structured_needs_cuda() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with pytest.raises(UnsupportedError, match="semi-structured 2:4") as e:
        to_semi_structured(m)
    assert "\n" not in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(semi_structured_unavailable() is not None, reason=str(semi_structured_unavailable()))
def test_semi_structured_on_cuda() -> None:
    from sparsec.torch import set_mask

    lin = torch.nn.Linear(128, 128).half().cuda()
    mask = torch.tensor([1, 1, 0, 0], dtype=torch.bool, device="cuda").repeat(128, 32)
    set_mask(lin, "weight", mask)
    dense = lin.weight.detach().clone()
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    expect = torch.nn.functional.linear(x, dense, lin.bias)
    assert to_semi_structured(torch.nn.Sequential(lin)) == ["0"]
    torch.testing.assert_close(lin(x), expect, rtol=1e-2, atol=1e-2)


def test_value_match_when_neither_position_nor_name_tells() -> None:
    """Nodes without scope metadata and initializers with anonymous names: placed by value."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    model = from_torch(m, (torch.randn(2, 16),))
    for node in model.graph:
        node.metadata_props.clear()
    for i, name in enumerate(list(model.graph.initializers)):
        value = model.graph.initializers.pop(name)
        value.name = f"anon_{i}"
        model.graph.register_initializer(value)
    applied = apply_artifact(m, (model, {"decisions": []}))
    assert set(applied.mapping) == set(m.state_dict()) and all(v.startswith("anon_") for v in applied.mapping.values())


def test_packed_nm_kernel_weights_come_back(tmp_path: Path) -> None:
    """The ORT backend packs 2:4 Linear weights for its kernels; they are unpacked and placed."""
    from sparsec.kernels.packing_nm import pack_nm, prune_nm
    from sparsec.runtime import make_session
    from sparsec.torch.packed import unpack_nm

    w = prune_nm(np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32), 2, 4)
    p = pack_nm(w, 2, 4)
    np.testing.assert_array_equal(unpack_nm(p.values, p.meta, 2, 4, 64, 40), w)  # 40 columns: a partial tile

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)).eval()
    # tune=False: fixed thresholds lower this 256x512 batch-1 layer on every CPU; the tuner may
    # keep it dense where dense measured faster (a fresh-clone CI run did exactly that).
    result = compile_model(from_torch(m, (torch.randn(1, 256),), dynamic_batch=False),
                           CompileOptions(sparsity="2:4", bench=False, prune_all=True, tune=False))
    assert any(d["pass"] == "lower-nm-kernels" for d in result.manifest["decisions"])  # really packed
    write_artifact(tmp_path / "art", result.files)
    applied = apply_artifact(m, tmp_path / "art")
    assert "0.weight" in applied.masked
    x = torch.randn(1, 256)
    sess = make_session((tmp_path / "art" / "model.onnx").read_bytes())
    with torch.no_grad():
        np.testing.assert_allclose(m(x).numpy(), sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], rtol=1e-4, atol=1e-5)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


def test_deduplicated_zero_biases_of_3d_linears() -> None:
    """Linear on 3-D inputs exports as MatMul(x, Transpose(W)) + Add(b); identical zero biases
    are merged into one initializer, so each bias is placed by its Add (or, folded into the
    kernel op as lower-nm-kernels does by default, by the op's bias input), not its name."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(_Block(), _Block()).eval()
    with torch.no_grad():
        for lin in m.modules():
            if isinstance(lin, torch.nn.Linear):
                lin.bias.zero_()
    x = torch.randn(1, 8, 64)
    model = from_torch(m, (x,), dynamic_batch=False)
    assert "1.down.bias" not in model.graph.initializers  # merged away by the exporter clean-up
    result = compile_model(model, CompileOptions(sparsity="2:4", bench=False, prune_all=True))
    applied = apply_artifact(m, (result.model, result.manifest))
    assert "1.down.bias" in applied.mapping and len(applied.masked) == 4
    from sparsec.ir.io import model_bytes
    from sparsec.runtime import make_session

    sess = make_session(model_bytes(result.model))
    with torch.no_grad():
        np.testing.assert_allclose(m(x).numpy(), sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], rtol=1e-4, atol=1e-5)


def test_sparsegpt_reconstructed_values_come_back(tmp_path: Path) -> None:
    """SparseGPT rewrites kept weights and biases: taken from the artifact, not checked."""
    from sparsec.ir.io import model_bytes
    from sparsec.runtime import make_session

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 16)).eval()
    model = from_torch(m, (torch.randn(4, 64),))
    np.savez(tmp_path / "calib.npz", **{model.graph.inputs[0].name: np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)})
    options = CompileOptions(sparsity="2:4", criterion="sparsegpt", calibration=str(tmp_path / "calib.npz"), bench=False, prune_all=True)
    result = compile_model(model, options)
    applied = apply_artifact(m, (result.model, result.manifest))
    assert "0.weight" in applied.reconstructed and "0.weight" in applied.masked
    x = torch.randn(4, 64)
    sess = make_session(model_bytes(result.model))
    with torch.no_grad():
        np.testing.assert_allclose(m(x).numpy(), sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], rtol=1e-4, atol=1e-5)
