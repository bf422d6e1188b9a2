"""Static batch-1 MiniLM, `--sparsity=auto --min-fidelity=0.98 --calib`: the compile and the
quality of its artifact on held-out sentences (prints one JSON object).

    python bench/static_batch_minilm.py [--calib 256] [--eval 500] [--work DIR] [--artifact DIR]

Exports all-MiniLM-L6-v2 with the batch fixed at 1 (a default export), writes the calibration
`.npz` (one padded sentence per sample, [n, 64] per input), runs
`sparsec compile minilm_b1.onnx --sparsity=auto --min-fidelity=0.98 --calib data.npz -o OUT`
and measures the artifact's mean cosine to the dense model on held-out sentences (disjoint
from the calibration ones), one sentence per run. `--artifact DIR`: evaluate an existing one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import onnx_ir as ir

from sparsec.calib.data import CalibrationData, save_npz
from sparsec.calib.metrics import mean_cosine, worst_cosine
from sparsec.calib.runner import run_callable
from sparsec.numerics import make_session
from sparsec.runtime import InferenceSession


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--work", type=Path, default=Path("out/static_batch_minilm"))
    p.add_argument("--artifact", type=Path, default=None, help="evaluate this artifact instead of compiling one")
    args = p.parse_args()
    from sparsec.models_zoo import minilm
    from sparsec.models_zoo.sentences import sentence_split

    args.work.mkdir(parents=True, exist_ok=True)
    model_path = args.work / "minilm_b1.onnx"
    if not model_path.is_file():
        ir.save(minilm.export_minilm_ir(1, static=True), model_path)
    calib_sentences, eval_sentences = sentence_split(args.calib, args.eval)
    result: dict[str, object] = {"calibration_sentences": len(calib_sentences), "eval_sentences": len(eval_sentences)}
    out = args.artifact
    if out is None:
        data = save_npz(args.work / "data.npz", minilm.tokenize(calib_sentences))
        out = args.work / "artifact"
        command = [sys.executable, "-m", "sparsec.cli.main", "compile", str(model_path), "--sparsity=auto",
                   "--min-fidelity=0.98", "--calib", str(data), "-o", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        result["compile_seconds"] = round(time.perf_counter() - start, 1)
        result["compile_rc"] = done.returncode
        result["compile_stdout"] = done.stdout.strip().splitlines()[-8:]
        if done.returncode != 0:
            result["compile_stderr"] = done.stderr.strip().splitlines()[-3:]
            print(json.dumps(result, indent=1))
            return 1
    manifest = json.loads((out / "manifest.json").read_text())
    feeds = CalibrationData(minilm.tokenize(eval_sentences), source="held-out sentences")
    model = ir.load(model_path)
    dense_session = make_session(model_path.read_bytes())
    compiled = InferenceSession(out)
    dense = run_callable(lambda f: dense_session.run(None, f), feeds.batches_for(model))
    sparse = run_callable(lambda f: compiled.run(None, f), feeds.batches_for(model))
    result.update({
        "artifact": str(out),
        "manifest_fidelity": manifest["fidelity"]["summary"],
        "held_out_mean_cosine": round(mean_cosine(dense, sparse), 5),
        "held_out_worst_cosine": round(worst_cosine(dense, sparse), 5),
        "layers": {d["layer"]: d["decision"] for d in manifest["decisions"] if d.get("pass") == "allocate"},
    })
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
