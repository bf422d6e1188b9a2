"""The `com.sparsec` op domain: every sparsity decision is an op with a schema and a verifier."""

from sparsec.dialect import attention as _attention  # noqa: F401  (registers SparseAttention)
from sparsec.dialect import moe as _moe  # noqa: F401  (registers MoE and its reference lowering)
from sparsec.dialect import ops as _ops  # noqa: F401  (registers the ops)
from sparsec.dialect.schema import DOMAIN, AttrSpec, OpSchema, get_schema, register_op, verify_node

__all__ = ["DOMAIN", "AttrSpec", "OpSchema", "get_schema", "register_op", "verify_node"]
