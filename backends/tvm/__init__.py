"""The Apache TVM backend (importing it registers the backend; TVM itself loads lazily)."""

from sparsec.backends.tvm import static_shapes  # noqa: F401  (registers the pass)
from sparsec.backends.tvm.backend import TvmBackend, spec_for
from sparsec.backends.tvm.target_spec import TvmTargetSpec, host_spec

__all__ = ["TvmBackend", "TvmTargetSpec", "host_spec", "spec_for"]
