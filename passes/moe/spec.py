"""The CLI's `--moe=experts:16,active:0.25[,method:weights,router:centroid]` -> moefy-ffn text."""

from __future__ import annotations

from sparsec.errors import OptionError

_KEYS = ("experts", "active", "method", "router", "gating")


def moe_pass_text(spec: str) -> str:
    """The `moefy-ffn{...}` pass for a --moe spec; OptionError (one line) if it is malformed."""
    fields: dict[str, str] = {}
    for part in spec.strip().split(","):
        key, sep, value = part.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in _KEYS or not value:
            raise OptionError(f"--moe={spec}: expected experts:E,active:FRACTION[,method:M,router:R,gating:G], "
                              f"got '{part}'")
        fields[key] = value
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
    return f"moefy-ffn{{experts={experts} top_k={top_k}{extra}}}"
