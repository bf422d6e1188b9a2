"""The human-readable report of an artifact (Markdown) and its per-layer picture."""

from __future__ import annotations

from typing import Any

from sparsec.attention_plot import attention_report
from sparsec.moe_plot import moe_report
from sparsec.passes.structural.crop_report import crop_table
from sparsec.plots import quality_report


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def render_report(manifest: dict[str, Any]) -> str:
    t = manifest["totals"]
    f = manifest["fidelity"]
    lat = manifest["latency"]
    lines = [
        "# sparsec compile report",
        "",
        f"- input: `{manifest['input']['source']}` (sha256 `{(manifest['input']['sha256'] or '')[:16]}`)",
        f"- target: `{manifest['target']}`, backend: `{manifest['backend']}`",
        f"- pipeline: `{manifest['pipeline'] or '(none)'}`",
        f"- legalization: `{manifest['legalization']}`",
        "",
        *verdict_section(manifest),
        "## Summary",
        "",
        "| metric | dense | compiled | ratio |",
        "|---|---|---|---|",
        f"| MACs | {t['macs']:,} | {t['effective_macs']:,} (useful) | {t['macs'] / max(t['effective_macs'], 1):.2f}x |",
        f"| weight bytes | {_mb(t['weight_bytes_dense'])} | {_mb(t['weight_bytes_sparse'])} (packed N:M) | "
        f"{t['weight_bytes_dense'] / max(t['weight_bytes_sparse'], 1):.2f}x |",
    ]
    if lat.get("measured"):
        lines.append(
            f"| latency (measured, {lat['threads']} threads) | {lat['dense_ms']:.3f} ms | {lat['compiled_ms']:.3f} ms | "
            f"{lat['speedup']:.2f}x |"
        )
    else:
        lines.append("| latency | not measured | not measured | - |")
    lines += [
        "",
        f"Fidelity against the dense model: **{f['summary']}**, max abs error {f['max_abs']:.4g}, "
        f"relative L2 error {f['rel_l2']:.4g}. This is the figure the verdict judges.",
        "",
    ]
    if manifest["runtime_ops"]:
        lines.append(f"Needs the sparsec kernel ops: {', '.join(manifest['runtime_ops'])}.")
        library = manifest.get("kernel_library")
        if library:
            lines.append(
                f"They are in `{library['file']}` ({library['arch']}, sha256 `{library['sha256'][:16]}...`): "
                "`sparsec.runtime.InferenceSession(folder)` uses it, and plain ONNX Runtime (>= 1.16) "
                "loads it without sparsec: in Python `so = onnxruntime.SessionOptions(); "
                f'so.register_custom_ops_library("{library["file"]}")`, in C/C++/C#/Java the same '
                "`RegisterCustomOpsLibrary` call on the session options."
            )
    else:
        lines.append(
            "The model is standard ONNX: N:M weights are stored dense (zeros included) and run on "
            "ONNX Runtime's dense kernels, so the packed weight bytes above are what a sparse kernel "
            "would stream, not what this model file holds."
        )
    lines += [
        "",
        "## Passes",
        "",
        "The cosine column compares each changing pass's outputs with those of *its own input* (the model "
        "before that pass) on one sample input; it shows which pass lost what, but the figures neither "
        "multiply nor add up to the fidelity above, which compares the final model with the dense one.",
        "",
        "| pass | changed | time (s) | cosine vs the pass's input (1 sample) | notes |",
        "|---|---|---|---|---|",
    ]
    for r in manifest["passes"]:
        cos = f"{r['fidelity']['worst_cosine']:.6f}" if "fidelity" in r else "-"
        notes = ", ".join(f"{k}={v}" for k, v in r["stats"].items() if not isinstance(v, (dict, list)))
        lines.append(f"| `{r['pass']}` | {r['changed']} | {r['seconds']:.3f} | {cos} | {notes} |")
    lines += ["", "## Layers", "", "| layer | op | weight | sparsity | MACs | weight bytes (dense -> packed) |", "|---|---|---|---|---|---|"]
    for layer in manifest["layers"]:
        lines.append(
            f"| {layer['layer']} | {layer['op_type']} | {layer['weight'] or '-'} | {layer['sparsity']} | "
            f"{layer['macs']:,} | {layer['weight_bytes_dense']:,} -> {layer['weight_bytes_sparse']:,} |"
        )
    lines += crop_table(manifest["decisions"])
    lines += quality_report(manifest)
    lines += attention_report(manifest)
    lines += moe_report(manifest)
    if "crop.png" in manifest["files"]:
        lines += ["", "![channels per coupled group](crop.png)"]
    if "recovery.png" in manifest["files"]:
        lines += ["", "## Fine-tuning recovery", "", "![loss and held-out cosine per step](recovery.png)"]
    skipped = [d for d in manifest["decisions"] if d.get("decision") == "skip"]
    if skipped:
        lines += ["", "## Skipped layers", ""]
        lines += [f"- {d['layer']} ({d['pass']}): {d['reason']}" for d in skipped]
    if "sparsity.png" in manifest["files"]:
        lines += ["", "## Per-layer weight bytes", "", "![per-layer weight bytes](sparsity.png)"]
    return "\n".join(lines) + "\n"


def verdict_section(manifest: dict[str, Any]) -> list[str]:
    v = manifest.get("verdict")
    if v is None:
        return []
    head = {"ok": "ok", "warn": "ok with warnings", "fail": "FAILED"}[v["status"]]
    lines = ["## Verdict", "", f"**{head}**" + (" (strict: warnings fail)" if v.get("strict") else ""), ""]
    lines += [f"- problem: {text}" for text in v["problems"]]
    lines += [f"- warning: {text}" for text in v["warnings"]]
    return [*lines, ""] if v["problems"] or v["warnings"] else lines


def sparsity_plot_data(dense: Any, sparse: Any) -> tuple[list[str], list[float], list[float]] | None:
    """(layer names, dense MB, packed MB) of the per-layer bytes plot (`sparsec.plot_job` draws it
    with `figures.bytes_per_layer_png`); None when nothing was pruned."""
    if not any(layer.sparsity != "dense" for layer in sparse.layers):
        return None
    names = [(layer.weight or layer.name).removesuffix(".weight") for layer in dense.layers]
    d = [layer.weight_bytes / 1e6 for layer in dense.layers]
    after = {layer.name: layer.weight_bytes / 1e6 for layer in sparse.layers}
    return names, d, [after.get(layer.name, 0.0) for layer in dense.layers]
