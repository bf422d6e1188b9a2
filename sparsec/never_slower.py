"""Never slower: when the compiled model is not faster than dense beyond noise, move sparse
layers back to dense, those the tuner measured gaining least first, until it is."""

from __future__ import annotations

import dataclasses
from typing import Any

from sparsec.pm.pipeline import Pipeline

KERNEL_PASSES = ("lower-nm-kernels", "lower-conv-nchwc")  # the passes whose layers can go back to dense


def kernel_layers_by_gain(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The layers lowered to kernels (N:M matrix products, NCHWc convs that name their source
    weight), least measured gain (dense_us - sparse_us) first."""
    lowered = [d for d in decisions if d.get("pass") in KERNEL_PASSES and str(d.get("decision", "")).startswith("kernel")
               and d.get("weight") is not None]

    def times_us(d: dict[str, Any]) -> tuple[float | None, float | None]:
        if d.get("pass") == "lower-conv-nchwc":  # profiler node times, in ms
            dense, sparse = d.get("dense_ms"), d.get("sparse_ms")
            return (None if dense is None else 1e3 * dense), (None if sparse is None else 1e3 * sparse)
        return d.get("dense_us"), d.get("sparse_us")

    def gain(dense: float | None, sparse: float | None) -> float:
        if dense is None or sparse is None:
            return 0.0  # unmeasured (tuning off): no known gain, moved back first
        return float(dense) - float(sparse)

    timed = sorted(((d, *times_us(d)) for d in lowered), key=lambda t: gain(t[1], t[2]))
    return [{"layer": d["layer"], "weight": d["weight"], "gain_us": round(gain(dense, sparse), 3),
             "dense_us": dense, "sparse_us": sparse} for d, dense, sparse in timed]


def with_dense_layers(pipeline: Pipeline, legalize: Pipeline, weights: list[str]) -> tuple[Pipeline, Pipeline]:
    """The pipelines with `weights` kept dense: excluded from pruning where the pipeline prunes
    only what runs faster (`only_faster`), and never lowered to kernels either way."""
    names = tuple(weights)

    def opt(p: Any) -> Any:
        if getattr(p, "only_faster", False):
            return dataclasses.replace(p, exclude=tuple(p.exclude) + names)
        return p

    def low(p: Any) -> Any:
        if p.name in KERNEL_PASSES:
            return dataclasses.replace(p, dense=tuple(p.dense) + names)
        return p

    return Pipeline([opt(p) for p in pipeline]), Pipeline([low(p) for p in legalize])


def lowering_summary(ctx: Any, records: list[Any], *, tuned: bool, fallback: dict[str, Any]) -> dict[str, Any]:
    """Per layer: how it runs (sparse kernel, dense with pruned weights, dense unpruned), the
    measured dense and sparse time per call behind the choice, and why."""
    moved = {m["weight"]: m for m in fallback.get("moved_to_dense", [])}
    lowering = {d["weight"]: d for d in ctx.decisions
                if d.get("pass") in ("lower-nm-kernels", "lower-conv-nchwc") and "weight" in d}
    for r in records:  # layers kept marked (pruned), stored dense by legalize-dense
        if r.name == "lower-nm-kernels":
            for weight, reason in r.stats.get("kept_dense", {}).items():
                lowering.setdefault(weight, {"decision": "dense", "reason": reason,
                                             "layer": ctx.measured.get(weight, {}).get("layer")})
    layers = []
    for weight in list(dict.fromkeys([*ctx.measured, *lowering, *moved])):
        tuned_info = ctx.measured.get(weight) or moved.get(weight, {})
        low = lowering.get(weight)
        if low is not None and str(low.get("decision", "")).startswith("kernel"):
            runs = "sparse kernel"
        elif low is not None:
            runs = "dense (weights pruned)"
        else:
            runs = "dense (not pruned)"
        entry = {"layer": (low or tuned_info).get("layer"), "weight": weight, "runs": runs}
        for k in ("dense_us", "sparse_us", "sparse_variant", "noise", "shape"):
            value = tuned_info.get(k, low.get(k) if low else None)
            if value is not None:
                entry[k] = value
        entry["reason"] = (low or {}).get("reason") or tuned_info.get("reason", "")
        if weight in moved:
            entry["reason"] = "moved back to dense: the compiled model was not faster than dense beyond noise"
        layers.append(entry)
    out: dict[str, Any] = {
        "choices": "measured on this machine (sparsec tune, cached per CPU)" if tuned else "fixed thresholds (tuning off)",
        "sparse_kernel_layers": sum(e["runs"] == "sparse kernel" for e in layers),
        "dense_layers": sum(e["runs"] != "sparse kernel" for e in layers),
        "layers": layers,
    }
    if fallback:
        out["never_slower"] = fallback
    return out


def fallback_words(fallback: dict[str, Any]) -> str:
    """The summary's note on what the never-slower fallback gave up."""
    moved = fallback.get("moved_to_dense", [])
    if not moved:
        return ""
    gain = sum(m["gain_us"] for m in moved)
    end = "" if fallback.get("faster_in_the_end") else "; still not faster beyond noise"
    return (f" ({len(moved)} layer{'s' if len(moved) > 1 else ''} moved back to dense, giving up "
            f"{gain:.1f} us of measured per-layer gain, so that the model is not slower{end})")
