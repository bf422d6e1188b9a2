"""Per-machine tuning: time dense ONNX Runtime against each kernel variant per layer shape,
cache the answers per CPU signature, and let lowering choose from them."""

from sparsec.tune.advisor import Thresholds, layer_shape, plan_layers
from sparsec.tune.cache import TuneCache
from sparsec.tune.signature import cache_dir, cpu_signature
from sparsec.tune.tuner import Choice, Tuner
from sparsec.tune.variants import DENSE, LayerShape, Variant, register_variant, variants_for

__all__ = ["DENSE", "Choice", "LayerShape", "Thresholds", "TuneCache", "Tuner", "Variant", "cache_dir",
           "cpu_signature", "layer_shape", "plan_layers", "register_variant", "variants_for"]
