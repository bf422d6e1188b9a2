"""Named presets: what the CLI sugar (`--target=cpu --sparsity=2:4`) expands to."""

from __future__ import annotations

from sparsec.errors import OptionError
from sparsec.nm_pattern import parse_nm
from sparsec.pm.pipeline import Pipeline, parse_pipeline
from sparsec.targets import get_target

DEFAULT_MIN_FIDELITY = 0.99


def preset_pipeline(
    *,
    target: str = "cpu",
    sparsity: str | None = "2:4",
    crop: float | None = None,
    crop_ratio: float | None = None,
    criterion: str | None = None,
    min_fidelity: float | None = None,
    attention: str | None = None,
    density: float | None = None,
    moe: str | None = None,
    prune_all: bool = False,
    recover: str | None = None,
) -> Pipeline:
    """The optimisation pipeline for a target and a sparsity spec ('2:4', '1:8', '80%', 'u:0.8', 'none').

    `crop` (fraction of MACs to remove) or `crop_ratio` (fraction of channels per group)
    puts a channel crop first; N:M sparsity then applies to what remains. '80%' or 'u:0.8' prunes
    that fraction of every weight's entries at any position (`sparsify`; on --target=cpu the NCHWc
    conv kernel runs such convs, other layers stay dense). `sparsity='auto'`
    chooses a pattern per layer (`allocate`) to keep a mean output cosine >= `min_fidelity`
    (default 0.99) with the most predicted speedup; it and the data-driven `criterion`s
    (wanda, sparsegpt) need calibration data. `attention` ('local:256,sinks:4', 'dense')
    rewrites every attention block to SparseAttention with that static layout, first;
    'auto' chooses a layout per head from calibration data, keeping `density` of the blocks.
    On a target that tunes (cpu), a fixed pattern prunes only layers measured to run faster
    sparse on this machine, unless `prune_all` (e.g. to ship N:M weights to another runtime).
    `recover` ('steps:200', 'steps:200,lr:3e-4,seconds:600') fine-tunes last (`recover`).
    """
    spec_target = get_target(target)  # validates the name
    passes: list[str] = []
    if attention is not None and attention.strip().lower() not in ("none", ""):
        passes.append(_attention_pass(attention, density))
    elif density is not None:
        raise OptionError("--density needs --attention=auto")
    if crop is not None and crop_ratio is not None:
        raise OptionError("give either --crop or --crop-ratio, not both")
    for flag, key, value in (("--crop", "macs", crop), ("--crop-ratio", "ratio", crop_ratio)):
        if value is not None:
            if not 0.0 < value < 1.0:
                raise OptionError(f"{flag}={value}: expected a fraction between 0 and 1 (e.g. 0.5)")
            passes.append(f"crop-channels{{{key}={value}}}")
    moe_floor = None
    if moe is not None and moe.strip().lower() not in ("none", ""):  # FFNs -> routed experts
        from sparsec.passes.moe.spec import moe_pass_text

        auto_moe = any(p.strip().lower() == "auto" for p in moe.split(","))
        sparsity_auto = sparsity is not None and sparsity.strip().lower() == "auto"
        # --min-fidelity goes to --moe=auto unless --sparsity=auto takes it.
        moe_floor = min_fidelity if auto_moe and not sparsity_auto else None
        passes.append(moe_pass_text(moe, moe_floor))
    if sparsity is not None and sparsity.strip().lower() not in ("none", "dense", ""):
        spec = sparsity.strip().lower()
        if spec == "auto":
            floor = DEFAULT_MIN_FIDELITY if min_fidelity is None else min_fidelity
            if not 0.0 < floor < 1.0:
                raise OptionError(f"--min-fidelity={floor}: expected a cosine between 0 and 1 (e.g. 0.98)")
            passes.append(f"allocate{{min_fidelity={floor} criterion={criterion or 'sparsegpt'}}}")
        elif (fraction := unstructured_fraction(spec)) is not None:
            extra = f" criterion={criterion}" if criterion not in (None, "magnitude") else ""
            passes.append(f"sparsify{{pattern=u:{fraction:g}{extra}}}")
        else:
            pattern = parse_nm(spec)
            extra = f" criterion={criterion}" if criterion not in (None, "magnitude") else ""
            if spec_target.sparse_k_multiple > 1:
                extra += f" k_multiple={spec_target.sparse_k_multiple}"
            if spec_target.tuned_here and not prune_all:
                extra += " only_faster=true"
            passes.append(f"nm-sparsity{{n={pattern.n} m={pattern.m}{extra}}}")
    sparsity_auto = sparsity is not None and sparsity.strip().lower() == "auto"
    if min_fidelity is not None and moe_floor is None and not sparsity_auto:
        raise OptionError("--min-fidelity needs --sparsity=auto or --moe=auto (a fixed pattern cannot promise a fidelity)")
    if recover is not None and recover.strip().lower() not in ("none", ""):
        passes.append(recover_pass_text(recover))
    return parse_pipeline(",".join(passes))


def unstructured_fraction(spec: str) -> float | None:
    """`80%`, `u:0.8` -> 0.8 (the fraction of weights pruned, any position); None for other specs
    (an N:M pattern); OptionError for a fraction outside (0, 1)."""
    text = spec.strip().lower()
    if text.endswith("%"):
        number, scale = text[:-1], 100.0
    elif text.startswith("u:"):
        number, scale = text[2:], 1.0
    else:
        return None
    try:
        fraction = float(number) / scale
    except ValueError:
        raise OptionError(f"--sparsity={spec}: expected a percentage like 80% or u:FRACTION like u:0.8") from None
    if not 0.0 < fraction < 1.0:
        raise OptionError(f"--sparsity={spec}: the pruned fraction must be between 0 and 1 (0% and 100%)")
    return fraction


_RECOVER_KEYS = {"steps": ("steps", int), "lr": ("lr", float), "seconds": ("max_seconds", float),
                 "batch": ("batch_size", int), "features": ("feature_weight", float)}


def recover_pass_text(spec: str) -> str:
    """`--recover=steps:200,lr:3e-4,seconds:600` -> `recover{steps=200 lr=0.0003 max_seconds=600.0}`."""
    options = []
    for item in spec.split(","):
        key, sep, value = item.strip().partition(":")
        if not sep or key not in _RECOVER_KEYS:
            raise OptionError(f"--recover={spec}: expected KEY:VALUE items with keys {', '.join(_RECOVER_KEYS)} (e.g. steps:200)")
        name, kind = _RECOVER_KEYS[key]
        try:
            options.append(f"{name}={kind(value)}")
        except ValueError:
            raise OptionError(f"--recover={spec}: '{value}' is not a valid {key}") from None
    return "recover{" + " ".join(options) + "}"


def _attention_pass(spec: str, density: float | None) -> str:
    """`--attention=local:256,sinks:4` / `--attention=auto --density=0.25` -> the pass text."""
    from sparsec.passes.attention.layout_spec import parse_layout

    text = spec.strip().lower()
    if text == "auto":
        value = 0.25 if density is None else density
        if not 0.0 < value <= 1.0:
            raise OptionError(f"--density={value}: expected a fraction of the attention blocks in (0, 1] (e.g. 0.25)")
        return f"sparse-attention{{layout=auto density={value}}}"
    if density is not None:
        raise OptionError("--density needs --attention=auto (a static layout fixes its own density)")
    parse_layout(text)  # one-line OptionError on bad text
    return f"sparse-attention{{layout='{text}'}}"
