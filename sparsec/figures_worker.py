"""Draw the per-layer bytes plot in a fresh interpreter: a JSON file [names, dense MB, sparse MB]
named by the argument, PNG bytes on stdout (`sparsec.plot_job`). Loads only `figures.py` (and matplotlib),
not the sparsec package, so that it starts in ~0.3 s."""

import importlib.util
import json
import sys
from pathlib import Path


def main() -> None:
    spec = importlib.util.spec_from_file_location("sparsec_figures", Path(__file__).with_name("figures.py"))
    assert spec is not None and spec.loader is not None
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    names, dense, sparse = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.buffer.write(figures.bytes_per_layer_png(names, dense, sparse))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
