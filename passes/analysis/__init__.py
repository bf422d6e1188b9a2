"""Analyses: cost model (more to come: sensitivity, dependency groups)."""
