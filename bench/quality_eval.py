"""Quality of pruning methods on real data; prints one JSON object per run.

    python bench/quality_eval.py --task minilm --method sparsegpt --pattern 2:4
    python bench/quality_eval.py --task minilm --method auto --min-fidelity 0.98
    python bench/quality_eval.py --task digits --method sparsegpt --pattern 2:4
    python bench/quality_eval.py --task digits --method alloc --pattern u:0.75
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from sparsec.errors import SparsecError
from sparsec.quality_eval import METHODS, digits_task, evaluate_method, minilm_task


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("digits", "minilm"), required=True)
    p.add_argument("--method", choices=METHODS, action="append", required=True, help="repeat to compare several")
    p.add_argument("--pattern", default="2:4", help="2:4, 4:8, u:0.75, b16x4:0.75 ... (alloc: u:BUDGET)")
    p.add_argument("--min-fidelity", type=float, default=0.98, help="auto: floor on mean output cosine")
    p.add_argument("--calib", type=int, default=None, help="calibration sentences/images")
    p.add_argument("--unpacked", action="store_true", help="minilm: one padded sentence per calibration sample")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.task == "digits":
            task = digits_task(**({"n_calib": args.calib} if args.calib else {}))
        else:
            task = minilm_task(packed=not args.unpacked, **({"n_calib": args.calib} if args.calib else {}))
        for method in args.method:
            print(json.dumps(evaluate_method(task, method, args.pattern, min_fidelity=args.min_fidelity)), flush=True)
    except SparsecError as e:
        print(f"quality_eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
