"""The verdict of a compile: did it change the model, keep its outputs and run faster?

Problems fail the compile (the CLI exits with `VERDICT_EXIT`; the artifact is still written
and its manifest says `"verdict": {"status": "fail", ...}`); warnings only warn, unless
`strict`, which makes every warning a problem (for CI).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module at start-up: keep it light
    from sparsec.pm.pipeline import Pipeline

# Exit status of a compile whose artifact was written but failed its verdict (2 is a user
# error with nothing written, 1 an internal error).
VERDICT_EXIT = 3
# Floor on the worst output cosine vs dense over the fidelity samples.
DEFAULT_MIN_COSINE = 0.9
# Latency is measured on a shared machine: "slower than dense" means slower by more than this.
SLOWER_TOLERANCE = 0.10


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def status(self) -> str:
        if self.problems or (self.strict and self.warnings):
            return "fail"
        return "warn" if self.warnings else "ok"

    @property
    def failures(self) -> list[str]:
        """What makes the compile fail: the problems, and under `strict` the warnings too."""
        return self.problems + (self.warnings if self.strict else [])

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "problems": self.problems, "warnings": self.warnings, "strict": self.strict}


def judge(
    manifest: dict[str, Any],
    *,
    changed: bool,
    requested: bool,
    min_cosine: float | None,
    real_samples: bool,
    strict: bool = False,
) -> Verdict:
    """Judge a compile from its manifest.

    `changed`: some optimisation pass changed the model; `requested`: the pipeline asked for
    a change (not empty). The fidelity floor fails the compile when the fidelity was measured
    on real samples (calibration data) or the floor was given explicitly; on random inputs
    the default floor only warns, since random inputs say little about real outputs.
    """
    v = Verdict(strict=strict)
    v.warnings.extend(manifest.get("warnings", []))  # from passes (e.g. a crop refused as buying too little)
    if requested and not changed:
        v.warnings.append("nothing was sparsified: " + top_reasons(manifest.get("decisions", [])))
    floor = DEFAULT_MIN_COSINE if min_cosine is None else min_cosine
    fid = manifest["fidelity"]
    if fid["worst_cosine"] < floor:
        text = f"fidelity below the floor: worst output cosine vs dense {fid['worst_cosine']:.4f} < {floor:g} (--min-cosine)"
        if real_samples or min_cosine is not None:
            v.problems.append(text)
        else:
            v.warnings.append(text + " on random inputs (a warning only; an explicit --min-cosine makes it binding)")
    lat = manifest.get("latency", {})
    # Slower beyond the tolerance and beyond the measurement's own noise (a speedup of 0.9x
    # +-15% on a busy machine says nothing).
    noise = float(lat.get("noise", 0.0))
    # An artifact running the dense model's own program (only weight values differ) cannot be
    # slower: a measured difference there is noise (sparsec/ir/program.py).
    slower = lat.get("measured") and not lat.get("identical_to_dense") and not lat.get("same_program_as_dense")
    if slower and lat["speedup"] < 1.0 / (1.0 + SLOWER_TOLERANCE) and lat["speedup"] * (1 + noise) < 1.0:
        v.problems.append(
            f"compiled model is slower than dense: {lat['compiled_ms']:.3f} ms vs {lat['dense_ms']:.3f} ms "
            f"({lat['speedup']:.2f}x, noise +-{noise:.1%})"
        )
    return v


def top_reasons(decisions: list[dict[str, Any]], limit: int = 3) -> str:
    """The most frequent reasons layers were skipped, e.g. "3 layers: weight has fewer than ..."."""
    counts = Counter(str(d.get("reason", "no reason given")) for d in decisions if d.get("decision") == "skip")
    if not counts:
        return "no layer the pipeline could change"
    parts = [f"{n} layer{'s' if n > 1 else ''}: {reason}" for reason, n in counts.most_common(limit)]
    rest = sum(counts.values()) - sum(n for _, n in counts.most_common(limit))
    if rest:
        parts.append(f"{rest} more")
    return "; ".join(parts)


def describe_pipeline(pipeline: Pipeline, target: str) -> str:
    """The pipeline in words, e.g. "crop 50% of MACs, then 2:4 sparsity (magnitude) for cpu"."""
    words = [_describe_pass(p) for p in pipeline]
    if not words:
        return f"no optimisation (dense) for {target}"
    return ", then ".join(words) + f" for {target}"


def _describe_pass(p: Any) -> str:
    if p.name == "nm-sparsity":
        return f"{p.n}:{p.m} sparsity ({p.criterion})"
    if p.name == "sparsify":
        return f"{p.pattern} sparsity ({p.criterion})"
    if p.name == "crop-channels":
        if p.macs:
            return f"channel crop removing {p.macs:.0%} of {'latency' if p.cost == 'latency' else 'MACs'}"
        return f"channel crop removing {p.ratio:.0%} of each group's channels"
    if p.name == "allocate":
        if p.min_fidelity:
            return f"per-layer patterns chosen for mean cosine >= {p.min_fidelity:g} ({p.criterion})"
        return f"per-layer patterns removing {p.budget:.0%} of {p.target} ({p.criterion})"
    return p.name
