"""sparsec.kernels: compiled sparse CPU kernels (N:M and block-sparse fp32 matmul).

Packing is offline numpy (works without the compiled library); the matmuls call a C library
built during ``pip install`` and dispatch at run time to AVX-512, AVX2, NEON or scalar code.
Importing this package never fails: a missing library surfaces as KernelUnavailableError
on first use, so the rest of sparsec keeps working without a compiler.
"""

if __name__ == "kernels":
    # Imported as a top-level `kernels` (Python started in the repository root puts it first
    # on sys.path), which shadows the PyPI package of that name (Hugging Face's, imported by
    # transformers). Hand the name over to that package (import_shadowed puts it in
    # sys.modules, where the import statement reads it); this folder is only `sparsec.kernels`.
    from ._shadow import import_shadowed

    import_shadowed(__name__, __path__)
else:
    from ._native import available as kernels_available
    from .errors import KernelUnavailableError, PackedFormatError
    from .isa import ENV_ISA, available_isas, default_threads
    from .matmul import block_matmul, nm_matmul
    from .packing_block import PackedBlock, pack_block, prune_block
    from .packing_nm import PackedNM, pack_nm, prune_nm

__all__ = [
    "ENV_ISA",
    "KernelUnavailableError",
    "PackedBlock",
    "PackedFormatError",
    "PackedNM",
    "available_isas",
    "block_matmul",
    "default_threads",
    "kernels_available",
    "nm_matmul",
    "pack_block",
    "pack_nm",
    "prune_block",
    "prune_nm",
]
