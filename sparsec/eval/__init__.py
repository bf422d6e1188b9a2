"""Evaluation tooling (real-data quality of pruning methods), used by `bench/` and the tests.

Not part of the compiler: nothing in the core imports `sparsec.eval`.
"""
