"""The calibration layer: everything that runs a model on calibration data.

- `data`: `CalibrationData` (.npz, iterables of feeds, arrays; bounded, hashed, batched in
  the model's own batch size) and `save_npz`;
- `runner`: `CalibrationRunner`, which exposes any set of intermediate values per batch
  (with the padding-row mask), and `run_outputs` / `run_values` for whole passes over the data;
- `stats`: layer input statistics (Grams), plain and paired with the dense model;
- `metrics`: output metrics, one name each (`mean_cosine`, `worst_cosine`, `kl`, ...), the
  damages built on them and `Fidelity`.
Nothing else in sparsec runs a model on calibration data.
"""

from sparsec.calib.data import CalibrationData, model_batch_size, save_npz
from sparsec.calib.metrics import DAMAGES, Fidelity, compare, kl, mean_cosine, worst_cosine
from sparsec.calib.runner import CalibrationRunner, run_outputs, run_values

__all__ = [
    "DAMAGES",
    "CalibrationData",
    "CalibrationRunner",
    "Fidelity",
    "compare",
    "kl",
    "mean_cosine",
    "model_batch_size",
    "run_outputs",
    "run_values",
    "save_npz",
    "worst_cosine",
]
