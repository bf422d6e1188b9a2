"""Real English sentences from the standard library's `pydoc_data.topics` (no download).

The help topics of the Python documentation hold a few thousand sentences of prose mixed
with code. We keep prose-like sentences only, dedupe them, shuffle them with a fixed seed
and hand out disjoint calibration and evaluation sets.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]+")


def _prose_like(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 40:
        return False
    alpha = sum(1 for w in words if _WORD.fullmatch(w.strip(".,;:!?()\"'")))
    # Mostly plain words, few code symbols: drops grammar rules and code examples.
    return alpha / len(words) >= 0.8 and not any(
        s in sentence for s in ("::=", ">>>", "***", "===", "---")
    )


@lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """Every prose-like sentence of `pydoc_data.topics`, deduplicated, in a fixed order."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(paragraph.split())
            for sentence in _SPLIT.split(text):
                if _prose_like(sentence):
                    seen.setdefault(sentence, None)
    return tuple(seen)


def sentence_split(n_calib: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint (calibration, evaluation) sentence lists, shuffled with a fixed seed."""
    pool = all_sentences()
    if n_calib + n_eval > len(pool):
        raise ValueError(f"asked for {n_calib + n_eval} sentences, only {len(pool)} available")
    order = np.random.default_rng(seed).permutation(len(pool))
    picked = [pool[i] for i in order[: n_calib + n_eval]]
    return picked[:n_calib], picked[n_calib:]
