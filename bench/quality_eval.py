"""Quality of pruning methods on real data; prints one JSON object per run.

    python bench/quality_eval.py --task minilm --method sparsegpt --pattern 2:4
    python bench/quality_eval.py --task minilm --method auto --min-fidelity 0.98
    python bench/quality_eval.py --task digits --method sparsegpt --pattern 2:4
    python bench/quality_eval.py --task digits --method alloc --pattern u:0.75
    python bench/quality_eval.py --task minilm --method sparsegpt --options "refit_norms=false"   # ablation

MiniLM calibration is one padded sentence per sample (the distribution the evaluation sees)
with the padding rows masked out of the statistics; `--packed` packs sentences into full
sequences instead. `--out FILE` also writes the results, with the command, as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from sparsec.errors import SparsecError
from sparsec.eval.quality import (
    METHODS,
    digits_task,
    evaluate_method,
    minilm_task,
    pipeline_for,
    with_options,
)

MINILM_CALIB = 1598  # calibration sentences: all of the ~2100 that are not among the 500 held out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("digits", "minilm"), required=True)
    p.add_argument("--method", choices=METHODS, action="append", required=True, help="repeat to compare several")
    p.add_argument("--pattern", default="2:4", help="2:4, 4:8, u:0.75, b16x4:0.75 ... (alloc: u:BUDGET)")
    p.add_argument("--min-fidelity", type=float, default=0.98, help="auto: floor on mean output cosine")
    p.add_argument("--calib", type=int, default=None, help=f"calibration sentences/images (minilm: {MINILM_CALIB})")
    p.add_argument("--eval", type=int, default=500, help="minilm: held-out evaluation sentences")
    p.add_argument("--packed", action="store_true", help="minilm: pack calibration sentences into full sequences")
    p.add_argument("--unpacked", action="store_true", help="minilm: one padded sentence per calibration sample (the default)")
    p.add_argument("--options", default="", help="extra options for the pass, e.g. 'correct=false damp=0.03' (ablations)")
    p.add_argument("--out", type=Path, default=None, help="also write the results (and the command) to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    command = "python bench/quality_eval.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = []
    try:
        if args.task == "digits":
            task = digits_task(**({"n_calib": args.calib} if args.calib else {}))
        else:
            task = minilm_task(n_calib=args.calib or MINILM_CALIB, n_eval=args.eval, packed=args.packed)
        for method in args.method:
            text = with_options(pipeline_for(method, args.pattern, min_fidelity=args.min_fidelity, budget=0.0, min_params=1), args.options)
            result = {"command": command, **evaluate_method(task, method, args.pattern, min_fidelity=args.min_fidelity, pipeline=text)}
            results.append(result)
            print(json.dumps(result), flush=True)
    except SparsecError as e:
        print(f"quality_eval: error: {e}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
