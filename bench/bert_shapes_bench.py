"""BERT-base layer shapes at a given row count: sparse N:M kernels (rows-as-lanes batch path
and the columns-as-lanes path it replaced) vs dense ONNX Runtime MatMul and torch.

One weight copy per shape (L3-resident: 2.4-9.4 MB), all contenders in this process with the
same threads, interleaved blocks with a pause between them (kernels_bench.time_side_by_side),
median of >= 40 runs. Prints JSON.

    flock /tmp/sparsec-cpu.lock .venv/bin/python bench/bert_shapes_bench.py --rows 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels_bench import Dense, time_side_by_side  # noqa: E402

SHAPES = ((768, 768), (768, 3072), (3072, 768))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="128", help="comma-separated row counts")
    ap.add_argument("--patterns", default="2:4,4:8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args(argv)

    import torch

    import sparsec.kernels as sk

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows_out = []
    for k, n in SHAPES:
        for pattern in args.patterns.split(","):
            nn, m = (int(v) for v in pattern.split(":"))
            w = sk.prune_nm(rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k), nn, m)
            packed = sk.pack_nm(w, nn, m)
            dense = Dense.build([w], args.threads)
            for b in (int(r) for r in args.rows.split(",")):
                x = rng.standard_normal((b, k), dtype=np.float32)
                xt = torch.from_numpy(x)

                def sparse(_i: int, path: str, x=x, packed=packed) -> object:
                    os.environ["SPARSEC_NM_ROWVEC_MIN_ROWS"] = "1" if path == "rows" else "1000000000"
                    return sk.nm_matmul(x, packed, threads=args.threads)

                ys = [sparse(0, "rows"), sparse(0, "cols")]
                ref = x.astype(np.float64) @ w.astype(np.float64)
                err = max(float(np.abs(y - ref).max() / np.abs(ref).max()) for y in ys)
                with torch.inference_mode():
                    (ort_s, _), (torch_s, _), (rows_s, _), (cols_s, _) = time_side_by_side([
                        lambda i, x=x, s=dense.sessions[0]: s.run(None, {"x": x}),
                        lambda i, xt=xt, wt=dense.torch_ws[0]: torch.matmul(xt, wt),
                        lambda i: sparse(i, "rows"),
                        lambda i: sparse(i, "cols"),
                    ], args.runs)
                os.environ.pop("SPARSEC_NM_ROWVEC_MIN_ROWS", None)
                best = min(ort_s, torch_s)
                flops = 2.0 * b * k * n
                rows_out.append({
                    "pattern": pattern, "K": k, "N": n, "rows": b,
                    "ort_ms": ort_s * 1e3, "torch_ms": torch_s * 1e3,
                    "sparse_rows_path_ms": rows_s * 1e3, "sparse_cols_path_ms": cols_s * 1e3,
                    "ort_GFLOPs": flops / ort_s / 1e9,
                    "sparse_rows_path_effective_GFLOPs": flops / rows_s / 1e9,
                    "speedup_rows_path_vs_best_dense": best / rows_s,
                    "speedup_cols_path_vs_best_dense": best / cols_s,
                    "rel_err_vs_fp64": err, "correct": err <= 1e-5,
                })
                print(f"{pattern} {k}x{n} rows {b}: ort {ort_s * 1e3:.3f} torch "
                      f"{torch_s * 1e3:.3f} rows-path {rows_s * 1e3:.3f} cols-path "
                      f"{cols_s * 1e3:.3f} ms -> {best / rows_s:.2f}x / {best / cols_s:.2f}x",
                      file=sys.stderr, flush=True)
    json.dump({"threads": args.threads, "loadavg_after": os.getloadavg()[0],
               "method": "one weight copy, median of >= runs after warm-up, interleaved blocks; "
                         "speedup vs the faster of ORT MatMul and torch",
               "results": rows_out}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if all(r["correct"] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
