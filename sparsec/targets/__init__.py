"""Targets: what a compile is for, one registered class each.

A target names its backend and owns what the compiler assumes about the machine: the
roofline constants behind the predicted-latency column (nominal; measured latency always
comes from a real benchmark), the channel multiple that keeps dense kernels efficient, and
which sparsity patterns and `com.sparsec` ops it accelerates. Adding a target is one new
module in this package with a `@register_target` class; it is found by name, nothing else
needs editing.
"""

from __future__ import annotations

from typing import ClassVar

from sparsec.errors import OptionError
from sparsec.plugin_registry import PluginRegistry


class Target:
    """Base class of targets; subclasses set the class attributes and register."""

    name: ClassVar[str] = ""
    backend: ClassVar[str] = ""  # a name registered with `sparsec.backends.register_backend`
    # `--backend` choices beyond the default: short name -> registered backend (e.g. tvm -> tvm-arm64)
    backends: ClassVar[dict[str, str]] = {}
    peak_gflops: ClassVar[float] = 0.0  # sustained fp32 GFLOP/s of the dense library
    dram_gbps: ClassVar[float] = 0.0  # sustained memory bandwidth, GB/s
    channel_multiple: ClassVar[int] = 1  # channel counts that keep dense kernels efficient
    patterns: ClassVar[frozenset[str]] = frozenset()  # pattern kinds run faster: nm, block, unstructured
    ops: ClassVar[frozenset[str]] = frozenset()  # com.sparsec ops with a fast lowering here
    # False where compiles run on another machine than the target's (no GPU here): latency is
    # then reported as not measured, with this reason.
    measured_here: ClassVar[bool] = True
    not_measured_reason: ClassVar[str] = ""
    # N:M layers whose reduction axis is not a multiple of this run dense on the target.
    sparse_k_multiple: ClassVar[int] = 1
    # The target times each layer shape dense vs sparse on this machine (sparsec.tune): the
    # preset then prunes only layers measured faster (`--prune-all` prunes every layer).
    tuned_here: ClassVar[bool] = False
    variants: ClassVar[tuple[str, ...]] = ()  # e.g. GPU archs: `--target=cuda --arch=sm_90`
    default_variant: ClassVar[str | None] = None

    def __init__(self, variant: str | None = None) -> None:
        if variant is not None and variant not in self.variants:
            choices = ", ".join(self.variants) if self.variants else "none"
            raise OptionError(f"target '{self.name}' has no variant '{variant}' (known: {choices})")
        self.variant = variant if variant is not None else self.default_variant

    @property
    def spec(self) -> str:
        """`name:variant` with the default variant filled in (`cuda` -> `cuda:sm_80`): what
        an artifact was compiled for, even when the command line left the variant out."""
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def backend_for(self, choice: str | None) -> str:
        """The registered backend for `--backend=choice` (None: the target's default)."""
        if choice is None:
            return self.backend
        known = {**self.backends, self.backend: self.backend}
        if choice in known:
            return known[choice]
        if choice in known.values():
            return choice
        names = ", ".join(sorted(self.backends) or [self.backend])
        raise OptionError(f"target '{self.name}' has no backend '{choice}' (known: {names})")

    def accelerates(self, kind: str) -> bool:
        """Whether a pattern kind (`nm`, `block`, `unstructured`) or a `com.sparsec` op runs faster here."""
        return kind in self.patterns or kind in self.ops

    def __repr__(self) -> str:
        return f"<target {self.name}: backend {self.backend}>"


_REGISTRY: PluginRegistry[type[Target]] = PluginRegistry("target", __name__)


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: make `cls` available as `--target=<cls.name>`."""
    if not cls.backend:
        raise ValueError(f"target class {cls.__name__} needs a backend")
    return _REGISTRY.register(cls)


def known_targets() -> list[str]:
    return _REGISTRY.names()


def get_target(name: str) -> Target:
    """A target by name; `name:variant` (e.g. `cuda:sm_90`) picks one of its variants."""
    base, _, variant = name.partition(":")
    return _REGISTRY.get(base)(variant or None)


__all__ = ["Target", "get_target", "known_targets", "register_target"]
