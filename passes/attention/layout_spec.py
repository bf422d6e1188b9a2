"""The text form of an attention layout: `local:256,sinks:4`, `local:64,topk:8`, `topk:8`, `dense`,
`local:64,topk:4,summary:1`.

Sizes are in tokens and round up to whole blocks: `local:W` keeps the ceil(W / block) key
blocks ending at each query's block (or either side of it, non-causal), `sinks:S` the first
ceil(S / block) key blocks (attention sinks, global tokens); `dense` keeps every block.
`topk:K` (in blocks, not tokens) adds per query block the K key blocks with the highest pooled
query-key score, chosen at run time from the data; alone it keeps the query's own block too.
`summary:1` reads every key block the rest leaves out as one key (its mean key and value).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsec.dialect.attention import ALL_BLOCKS
from sparsec.errors import OptionError


@dataclass(frozen=True)
class LayoutSpec:
    local_tokens: int | None  # None: every block
    sink_tokens: int = 0
    topk_blocks: int = 0
    summary: bool = False

    def blocks(self, block: int) -> tuple[int, int]:
        """(local_blocks, sink_blocks) for one block size."""
        local = ALL_BLOCKS if self.local_tokens is None else max(1, -(-self.local_tokens // block))
        return local, -(-self.sink_tokens // block)


def parse_layout(text: str) -> LayoutSpec:
    """Parse 'local:256,sinks:4,topk:8' / 'dense'; OptionError (one line) on anything else."""
    spec = text.strip().lower()
    if spec in ("dense", "all", ""):
        return LayoutSpec(None, 0)
    local: int | None = None
    sinks = topk = summary = 0
    for part in spec.split(","):
        key, sep, value = part.strip().partition(":")
        if not sep or not value.strip().isdigit():
            raise OptionError(f"attention layout '{text}': expected items like local:256,sinks:4,topk:8, got '{part}'")
        n = int(value)
        if key == "local":
            if n < 1:
                raise OptionError(f"attention layout '{text}': local window must be >= 1 token")
            local = n
        elif key in ("sinks", "sink", "global"):
            sinks = n
        elif key == "topk":
            if n < 1:
                raise OptionError(f"attention layout '{text}': topk must be >= 1 block")
            topk = n
        elif key == "summary":
            if n not in (0, 1):
                raise OptionError(f"attention layout '{text}': summary must be 0 or 1")
            summary = n
        else:
            raise OptionError(f"attention layout '{text}': unknown item '{key}' (known: local, sinks, topk, summary, dense)")
    if local is None and not topk:
        raise OptionError(f"attention layout '{text}': give a local window (local:TOKENS), topk:BLOCKS or 'dense'")
    return LayoutSpec(1 if local is None else local, sinks, topk, bool(summary))
