"""`--moe=experts:E,active:FRACTION` on the CLI: pipeline expansion, errors, and a compile whose
artifact runs the MoE kernel op in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from sparsec.cli.main import main
from sparsec.passes.moe.spec import moe_pass_text


def test_spec_expands_to_moefy_ffn() -> None:
    assert moe_pass_text("experts:16,active:0.25") == "moefy-ffn{experts=16 top_k=4}"
    assert moe_pass_text("experts:8, active:0.5, router:learned") == "moefy-ffn{experts=8 top_k=4 router=learned}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [("experts:16,active:0.3", "not a whole number of experts"), ("experts:16", "give experts:E and active"),
     ("auto,active:0.5", "auto chooses the active fraction"), ("experts:x,active:0.5", "must be an integer"), ("size:4", "expected experts:E")],
)
def test_bad_specs_fail_with_one_line(capsys, spec: str, message: str) -> None:  # noqa: ANN001
    assert main(["pipeline", "show", f"--moe={spec}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsec: error:") and message in err and len(err.splitlines()) == 1


def test_compile_with_moe_runs_the_kernel(hf_export, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "compile", str(hf_export("bert")), "--moe=experts:4,active:0.5", "--sparsity=none",
                 "--no-bench", "-o", str(out)]) == 0  # tiny FFNs: the kernel call costs more than it saves
    manifest = json.loads((out / "manifest.json").read_text())
    assert "moefy-ffn{experts=4 top_k=2" in json.dumps(manifest["pipeline"])
    decisions = [d for d in manifest["decisions"] if d["pass"] == "moefy-ffn"]
    assert len(decisions) == 2 and all(d["decision"] == "moe 2/4" and "cosine" in d for d in decisions)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    from sparsec.kernels import kernels_available

    assert ("MoEFFN" in ops) == kernels_available()
    assert manifest["fidelity"]["worst_cosine"] > 0.99
    # Routing per layer: each token selects top_k = 2 of 4 experts, so the shares sum to 2.
    assert all(len(d["selected_share"]) == 4 and abs(sum(d["selected_share"]) - 2.0) < 1e-5 for d in decisions)
    assert (out / "moe_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Routed experts" in report and "![expert usage](moe_usage.png)" in report
    assert report.count("| moefy-ffn | moe 2/4 | 0.500 |") == 2
