from __future__ import annotations

from dataclasses import dataclass

import pytest

from sparsec.passes.sparsify.nm_sparsity import NMSparsity
from sparsec.pm import Pass, PassResult, all_passes, register_pass


def test_builtin_passes_are_registered_once() -> None:
    passes = all_passes()
    assert passes["nm-sparsity"] is NMSparsity
    assert "legalize-dense" in passes


def test_duplicate_names_are_refused() -> None:
    @dataclass(frozen=True)
    class Impostor(Pass):
        name = "nm-sparsity"

        def run(self, model, ctx):  # pragma: no cover - never runs
            return PassResult(False)

    with pytest.raises(ValueError, match="registered twice"):
        register_pass(Impostor)


def test_names_must_be_kebab_case() -> None:
    @dataclass(frozen=True)
    class Bad(Pass):
        name = "Bad_Name"

    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(Bad)
