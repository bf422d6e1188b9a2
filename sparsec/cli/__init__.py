"""The `sparsec` command line."""
