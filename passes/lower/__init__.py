"""Lowering passes shared by backends."""
