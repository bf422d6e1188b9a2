"""sparsec's passes (shipped as `sparsec.passes`); importing this package registers them."""

from sparsec.passes.analysis import (
    cost_model,  # noqa: F401
    sensitivity,  # noqa: F401
)
from sparsec.passes.attention import sparse_attention  # noqa: F401
from sparsec.passes.lower import legalize_dense  # noqa: F401
from sparsec.passes.moe import (
    merge_experts,  # noqa: F401
    moefy_ffn,  # noqa: F401
    slim_experts,  # noqa: F401
)
from sparsec.passes.recover import recover  # noqa: F401
from sparsec.passes.sparsify import (
    allocate,  # noqa: F401
    nm_sparsity,  # noqa: F401
    sparsify,  # noqa: F401
)
from sparsec.passes.structural import crop_channels  # noqa: F401
