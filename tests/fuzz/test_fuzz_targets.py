"""Bounded, seeded fuzzing of every input parser (bench/fuzz.py runs the same at scale).

Each target's cases must succeed or fail with one clean line (fuzz_property.py); a sample
also goes through the CLI, in process and as subprocesses, where an error must be exit 2
with one `sparsec: error:` line and no output left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsec import kernels as sk

from . import gen_npz, gen_onnx, gen_packed, gen_pipeline
from .fuzz_property import check_cli, check_cli_inprocess
from .gen_models import mlp_proto

# Cases per target: together well under a minute on two loaded cores.
TARGETS = {
    "pipeline_text": (gen_pipeline.text_case, 300),
    "pipeline_yaml": (gen_pipeline.yaml_case, 100),
    "onnx": (gen_onnx.onnx_case, 150),
    "npz": (gen_npz.npz_case, 120),
    "packed_python": (gen_packed.python_case, 200),
    "packed_ort": (gen_packed.ort_case, 120),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_cases_succeed_or_fail_with_one_line(target: str) -> None:
    if target.startswith("packed") and not sk.kernels_available():
        pytest.skip("sparsec kernels not built")
    fn, cases = TARGETS[target]
    outcomes = {seed: fn(seed) for seed in range(cases)}
    failures = {seed: o.detail for seed, o in outcomes.items() if o.failed}
    assert not failures, f"{len(failures)} of {cases} cases failed, e.g. {list(failures.items())[:3]}"
    kinds = {o.kind for o in outcomes.values()}
    assert kinds == {"success", "error"}, f"the generator must reach both outcomes, got {kinds}"


def _mlp_file(folder: Path) -> Path:
    path = folder / "mlp.onnx"
    path.write_bytes(mlp_proto().SerializeToString())
    return path


def test_cli_in_process(tmp_path: Path) -> None:
    model = _mlp_file(tmp_path)
    problems = []
    for seed in range(40):
        text = gen_pipeline.pipeline_text(seed)
        problems.append(check_cli_inprocess(["pipeline", "show", "-p", text]))
        yaml_file = tmp_path / f"p{seed}.yaml"
        yaml_file.write_text(gen_pipeline.pipeline_yaml(seed))
        problems.append(check_cli_inprocess(["pipeline", "show", "--pipeline-file", str(yaml_file)]))
    for seed in range(16):
        folder = tmp_path / f"onnx{seed}"
        folder.mkdir()
        path = gen_onnx.write_case(seed, folder)
        problems.append(check_cli_inprocess(["inspect", str(path)]))
        out = tmp_path / f"opt{seed}.onnx"
        problems.append(check_cli_inprocess(["opt", str(path), "-p", "nm-sparsity{min_params=0}", "-o", str(out)], out=None))
        if out.exists() and problems[-1].kind == "error":
            problems.append(gen_onnx.Outcome("fail", f"opt left {out.name} after an error"))
    for seed in range(8):
        calib = tmp_path / f"c{seed}.npz"
        gen_npz.write_case(seed, calib)
        out = tmp_path / f"o{seed}.onnx"
        problems.append(check_cli_inprocess(["opt", str(model), "--calib", str(calib), "-p", "nm-sparsity{criterion=wanda min_params=0}", "-o", str(out)]))
    failed = [o.detail for o in problems if o.failed]
    assert not failed, failed[:3]


@pytest.mark.slow
def test_cli_subprocesses(tmp_path: Path) -> None:
    """Real processes: exit status, the one stderr line, and the artifact folder."""
    model = _mlp_file(tmp_path)
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(model.read_bytes()[:3000])
    calib = tmp_path / "nan.npz"
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    x[3, 5] = np.nan
    np.savez(calib, x=x)
    cases = [
        (["compile", str(bad), "-o", str(tmp_path / "a"), "--no-bench"], tmp_path / "a"),
        (["compile", str(model), "-p", "nm-sparsity{damp=nan}", "-o", str(tmp_path / "b"), "--no-bench"], tmp_path / "b"),
        (["compile", str(model), "--sparsity=auto", "--calib", str(calib), "-o", str(tmp_path / "c"), "--no-bench"], tmp_path / "c"),
    ]
    outcomes = [check_cli(argv, out, complete=("model.onnx", "manifest.json")) for argv, out in cases]
    out = tmp_path / "sparse.onnx"
    outcomes.append(check_cli(["opt", str(model), "-p", "nm-sparsity{min_params=0}", "-o", str(out)], out))
    assert [o.kind for o in outcomes] == ["error", "error", "error", "success"], outcomes
    assert out.is_file()
