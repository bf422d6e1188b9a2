"""The CLI's `--moe=...` -> pass text: `experts:16,active:0.25[,method:weights,router:centroid,
k:per-layer]` splits dense FFNs (moefy-ffn; `k:per-layer` chooses top_k per FFN from calibration
data at the same average); `prune-experts:0.5` or `merge-experts:0.5`, and/or `top-k:1` slim
routed models (prune-experts, merge-experts, moe-top-k; exported MoE blocks are lifted first)."""

from __future__ import annotations

from sparsec.errors import OptionError

_KEYS = ("experts", "active", "method", "router", "gating", "k")
_SLIM_KEYS = ("prune-experts", "merge-experts", "top-k")


def _slim_pass_text(spec: str, fields: dict[str, str]) -> str:
    passes = []
    if "prune-experts" in fields and "merge-experts" in fields:
        raise OptionError(f"--moe={spec}: give prune-experts or merge-experts, not both")
    for name in ("prune-experts", "merge-experts"):
        if name not in fields:
            continue
        try:
            keep = float(fields[name])
        except ValueError:
            keep = -1.0
        if not 0.0 < keep <= 1.0:
            raise OptionError(f"--moe={spec}: {name} takes the fraction of experts to keep, in (0, 1] (e.g. 0.5)")
        passes.append(f"{name}{{keep={keep:g}}}")
    if "top-k" in fields:
        value = fields["top-k"]
        if not value.isdigit() or int(value) < 1:
            raise OptionError(f"--moe={spec}: top-k takes a positive whole number of experts (e.g. 1)")
        passes.append(f"moe-top-k{{k={int(value)}}}")
    return ",".join(passes)


def _auto_pass_text(spec: str, fields: dict[str, str], min_fidelity: float | None) -> str:
    if any(k in fields for k in (*_SLIM_KEYS, "active", "k")):
        raise OptionError(f"--moe={spec}: auto chooses the active fraction per FFN; give experts, method, router or "
                          "gating only")
    floor = 0.99 if min_fidelity is None else min_fidelity
    if not 0.0 < floor < 1.0:
        raise OptionError(f"--min-fidelity={floor}: expected a cosine between 0 and 1 (e.g. 0.97)")
    experts = fields.get("experts", "16")
    if not experts.isdigit() or int(experts) < 1:
        raise OptionError(f"--moe={spec}: experts must be a positive integer")
    # Calibrated by construction (the floor needs data): co-activation experts, learned router.
    method, router = fields.get("method", "coactivation"), fields.get("router", "learned")
    extra = f" gating={fields['gating']}" if "gating" in fields else ""
    return f"moefy-ffn{{experts={int(experts)} min_fidelity={floor:g} method={method} router={router}{extra}}}"


def moe_pass_text(spec: str, min_fidelity: float | None = None) -> str:
    """The `moefy-ffn{...}` pass for a --moe spec; OptionError (one line) if it is malformed.
    `auto[,experts:E,...]` chooses top_k per FFN for the fewest active neurons that keep the
    output cosine >= `min_fidelity` on calibration data (default 0.99)."""
    fields: dict[str, str] = {}
    auto = False
    for part in spec.strip().split(","):
        key, sep, value = part.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "auto" and not sep:
            auto = True
            continue
        if not sep or key not in (*_KEYS, *_SLIM_KEYS) or not value:
            raise OptionError(f"--moe={spec}: expected experts:E,active:FRACTION[,method:M,router:R,gating:G,k:K] "
                              f"or prune-experts:FRACTION|merge-experts:FRACTION[,top-k:K], got '{part}'")
        fields[key] = value
    if auto:
        return _auto_pass_text(spec, fields, min_fidelity)
    if min_fidelity is not None:
        raise OptionError("--min-fidelity with --moe needs --moe=auto (a fixed active fraction cannot promise a fidelity)")
    if any(k in fields for k in _SLIM_KEYS):
        if any(k in fields for k in _KEYS):
            raise OptionError(f"--moe={spec}: prune-experts/merge-experts/top-k slim routed models; they do not mix "
                              "with experts/active")
        return _slim_pass_text(spec, fields)
    if spec.strip().lower() == "auto" or "experts" not in fields or "active" not in fields:
        raise OptionError(f"--moe={spec}: give experts:E and active:FRACTION (e.g. experts:16,active:0.25)")
    try:
        experts, active = int(fields["experts"]), float(fields["active"])
    except ValueError:
        raise OptionError(f"--moe={spec}: experts must be an integer and active a fraction") from None
    if experts < 1 or not 0.0 < active <= 1.0:
        raise OptionError(f"--moe={spec}: need experts >= 1 and 0 < active <= 1")
    top_k = round(active * experts)
    if top_k < 1 or abs(top_k - active * experts) > 1e-6:
        raise OptionError(f"--moe={spec}: active={active:g} of {experts} experts is not a whole number of experts")
    extra = "".join(f" {k}={fields[k]}" for k in ("method", "router", "gating") if k in fields)
    choice = fields.get("k", "uniform").lower()
    if choice not in ("uniform", "per-layer"):
        raise OptionError(f"--moe={spec}: k is uniform (every FFN runs active x experts) or per-layer (calibrated)")
    if choice == "per-layer":  # the allocator picks each FFN's top_k; the average stays at `active`
        extra += f" active={active:g}"
    return f"moefy-ffn{{experts={experts} top_k={top_k}{extra}}}"
