"""CLI: `inspect` lists attention blocks and misses; `compile --attention=...` rewrites them."""

from __future__ import annotations

import json

from sparsec.cli.main import main


def test_inspect_lists_attention(hf_export, capsys) -> None:
    path = hf_export("llama", "legacy")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "attention: 2 block(s) found, 0 missed, 0 already sparse" in out
    assert "(kv heads 2)" in out
    assert main(["inspect", "--json", str(path)]) == 0
    section = json.loads(capsys.readouterr().out)["attention"]
    assert [b["kv_heads"] for b in section["blocks"]] == [2, 2] and section["missed"] == []


def test_compile_with_attention_layout(hf_export, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["compile", str(hf_export("gpt2", "legacy")), "--sparsity=none", "--attention=local:64,sinks:4",
               "--no-bench", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert "sparse-attention{layout='local:64,sinks:4'" in json.dumps(manifest)
    decisions = [d for d in manifest.get("decisions", []) if d.get("pass") == "sparse-attention"]
    assert len(decisions) == 2
    import onnx

    ops = {(n.domain, n.op_type) for n in onnx.load(out / "model.onnx").graph.node}
    assert ("com.sparsec.kernels", "SparseAttention") in ops
    capsys.readouterr()
    # inspect reads the artifact back: kernel ops raised to SparseAttention with their layout
    assert main(["inspect", "--json", str(out)]) == 0
    sparse = json.loads(capsys.readouterr().out)["attention"]["sparse"]
    assert [(b["block"], b["local_blocks"], b["sink_blocks"], b["causal"]) for b in sparse] == [(64, [1], [1], True)] * 2


def test_bad_attention_flag_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "never"
    rc = main(["compile", "zoo:mlp", "--attention=local:0", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("sparsec: error: ")
    assert not out.exists()


def test_compile_with_run_time_topk_runs_on_the_kernel(hf_export, tmp_path, capsys) -> None:
    import onnx

    out = tmp_path / "out"
    rc = main(["compile", str(hf_export("gpt2", "legacy")),
               "-p", "sparse-attention{layout='topk:1' block=4}", "--no-bench", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    decisions = [d for d in manifest["decisions"] if d.get("pass") == "sparse-attention"]
    assert [d["topk_blocks"] for d in decisions] == [[1], [1]] and all("topk=1" in d["decision"] for d in decisions)
    fid = next(p for p in manifest["passes"] if p["pass"].startswith("sparse-attention"))["fidelity"]
    assert fid["worst_cosine"] > 0.5
    model = onnx.load(out / "model.onnx")
    kernels = [n for n in model.graph.node if (n.domain, n.op_type) == ("com.sparsec.kernels", "SparseAttention")]
    layouts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert len(kernels) == 2 and all(layouts[n.input[3]].shape[0] == 3 for n in kernels)  # [local, sinks, topk]
    assert "| [1] |" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["inspect", "--json", str(out)]) == 0
    sparse = json.loads(capsys.readouterr().out)["attention"]["sparse"]
    assert [b.get("topk_blocks") for b in sparse] == [[1], [1]]
