"""The text form of a static attention layout: `local:256,sinks:4`, `dense`.

Sizes are in tokens and round up to whole blocks: `local:W` keeps the ceil(W / block) key
blocks ending at each query's block (or either side of it, non-causal), `sinks:S` the first
ceil(S / block) key blocks (attention sinks, global tokens); `dense` keeps every block.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsec.dialect.attention import ALL_BLOCKS
from sparsec.errors import OptionError


@dataclass(frozen=True)
class LayoutSpec:
    local_tokens: int | None  # None: every block
    sink_tokens: int = 0

    def blocks(self, block: int) -> tuple[int, int]:
        """(local_blocks, sink_blocks) for one block size."""
        local = ALL_BLOCKS if self.local_tokens is None else max(1, -(-self.local_tokens // block))
        return local, -(-self.sink_tokens // block)


def parse_layout(text: str) -> LayoutSpec:
    """Parse 'local:256,sinks:4' / 'dense'; OptionError (one line) on anything else."""
    spec = text.strip().lower()
    if spec in ("dense", "all", ""):
        return LayoutSpec(None, 0)
    local: int | None = None
    sinks = 0
    for part in spec.split(","):
        key, sep, value = part.strip().partition(":")
        if not sep or not value.strip().isdigit():
            raise OptionError(f"attention layout '{text}': expected items like local:256,sinks:4, got '{part}'")
        n = int(value)
        if key == "local":
            if n < 1:
                raise OptionError(f"attention layout '{text}': local window must be >= 1 token")
            local = n
        elif key in ("sinks", "sink", "global"):
            sinks = n
        else:
            raise OptionError(f"attention layout '{text}': unknown item '{key}' (known: local, sinks, dense)")
    if local is None:
        raise OptionError(f"attention layout '{text}': give a local window (local:TOKENS) or 'dense'")
    return LayoutSpec(local, sinks)
