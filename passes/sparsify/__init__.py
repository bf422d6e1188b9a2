"""Sparsifying rewrites: N:M (more to come: block, unstructured)."""
