"""Errors raised by sparsec.kernels."""


class KernelUnavailableError(RuntimeError):
    """The compiled kernel library is missing (no C compiler at install time) or unusable.

    A separate type so callers (the ORT backend, benchmarks) can fall back to dense
    execution instead of crashing; the message is one line naming the cause and the fix.
    """


class PackedFormatError(ValueError):
    """Packed sparse data is malformed: wrong lengths, out-of-range or unsorted positions."""
