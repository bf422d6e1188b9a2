"""A zoo PyTorch module compiles through the Python API exactly as its ONNX export does."""

from __future__ import annotations

import numpy as np
import onnx

from sparsec import CompileOptions, compile_file, compile_model, from_torch
from sparsec.models_zoo import export_onnx, get
from sparsec.numerics import make_session, sample_inputs


def test_torch_module_and_its_onnx_export_compile_alike(tmp_path) -> None:
    entry = get("mlp")
    module = entry.build()
    model = from_torch(module, entry.example_inputs(1), input_names=entry.input_names,
                       output_names=entry.output_names)
    options = CompileOptions(sparsity="2:4", bench=False, fidelity_samples=1)
    via_api = compile_model(model, options)

    path = export_onnx("mlp", tmp_path / "mlp.onnx")
    via_file = compile_file(path, tmp_path / "out", options)

    # Same decisions, named by state_dict keys.
    api_decisions = [(d["weight"], d["decision"]) for d in via_api.manifest["decisions"]]
    assert api_decisions == [(d["weight"], d["decision"]) for d in via_file.manifest["decisions"]]
    assert {w for w, _ in api_decisions} <= set(module.state_dict())
    # Same weights and same outputs.
    a = onnx.load_from_string(via_api.files["model.onnx"])
    b = onnx.load(tmp_path / "out" / "model.onnx")
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])
    feeds = sample_inputs(via_api.model, dims={"batch": 3})
    out_a = make_session(via_api.files["model.onnx"]).run(None, feeds)
    out_b = make_session((tmp_path / "out" / "model.onnx").read_bytes()).run(None, feeds)
    np.testing.assert_array_equal(out_a[0], out_b[0])
    assert via_api.fidelity == via_file.fidelity


def test_capture_keeps_state_dict_values() -> None:
    entry = get("mlp")
    module = entry.build()
    model = from_torch(module, entry.example_inputs(2))
    state = module.state_dict()
    assert set(state) <= set(model.graph.initializers)
    for name, tensor in state.items():
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), tensor.numpy())
