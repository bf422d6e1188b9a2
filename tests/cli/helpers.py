"""Small models and a CLI runner shared by the CLI tests (imported, not a conftest)."""

from __future__ import annotations

from pathlib import Path

from sparsec.cli.main import main
from sparsec.ir.io import save_model
from sparsec.testing import make_model, mlp_model, seeded


def write_mlp(folder: Path, name: str = "m.onnx") -> Path:
    """Gemm 64->64, Relu, MatMul 64->32 on a dynamic batch: big enough that 2:4 applies with the
    default min_params=1024, small enough to compile in ~1 s."""
    path = folder / name
    save_model(mlp_model("batch", (64, 64, 32), gemm_first=True), path)
    return path


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr)."""
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def write_wide_mlp(folder: Path, name: str = "wide.onnx") -> Path:
    """Two 256x256 layers: large enough that 2:4 lowers to the kernel ops."""
    text = """
<ir_version: 10, opset_import: ["" : 18]>
wide (float[1,256] x) => (float[1,256] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = Gemm <transB = 1> (r, w2, b2)
}
"""
    path = folder / name
    save_model(make_model(text, w1=seeded((256, 256), 4), w2=seeded((256, 256), 5), b2=seeded((256,), 6)), path)
    return path


def write_deep_chain(folder: Path, layers: int, name: str = "deep.onnx") -> Path:
    """`layers` small MatMuls in a chain: a model whose inspect output is long."""
    body = "\n".join(f"  h{i + 1} = MatMul(h{i}, w{i})" for i in range(layers))
    text = f'<ir_version: 10, opset_import: ["" : 18]>\ndeep (float[1,8] h0) => (float[1,8] h{layers}) {{\n{body}\n}}'
    path = folder / name
    save_model(make_model(text, **{f"w{i}": seeded((8, 8), i) for i in range(layers)}), path)
    return path
