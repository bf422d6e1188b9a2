"""Sparse attention: find attention blocks in exports and rewrite them to SparseAttention."""
