"""Pipelines: an ordered list of passes with three spellings (Python, text, YAML)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from sparsec.errors import PipelineError
from sparsec.pm.pass_base import Pass
from sparsec.pm.pipeline_text import format_value, parse_value, split_items
from sparsec.pm.registry import get_pass


class Pipeline:
    """An ordered, immutable list of configured passes. `str()` gives text that parses back."""

    def __init__(self, passes: Iterable[Pass] = ()) -> None:
        self.passes: tuple[Pass, ...] = tuple(passes)

    def __iter__(self) -> Iterator[Pass]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.passes + other.passes)

    def __repr__(self) -> str:
        return f"Pipeline({self.to_text(full=True)!r})"

    def to_text(self, *, full: bool = False) -> str:
        return ",".join(p.to_text(full=full) for p in self.passes)

    def __str__(self) -> str:
        return self.to_text()

    def to_yaml(self, *, full: bool = False) -> str:
        doc = [{p.name: p.option_values(include_defaults=full) or None} for p in self.passes]
        doc = [{k: _yaml_values(v)} for item in doc for k, v in item.items()]
        return yaml.safe_dump(doc, sort_keys=False)


def _yaml_values(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def make_pass(name: str, options: dict[str, Any]) -> Pass:
    """Build a pass from its name and options given as text or as Python values."""
    cls = get_pass(name)
    infos = {o.name: o for o in cls.options()}
    kwargs = {}
    for key, raw in options.items():
        info = infos.get(key)
        if info is None:
            valid = ", ".join(infos) or "none"
            raise PipelineError(f"pass '{name}' has no option '{key}' (options: {valid})")
        where = f"pass '{name}' option '{key}'"
        text = raw if isinstance(raw, str) else format_value(_plain_value(raw, where))
        kwargs[key] = parse_value(text, info.type, where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"pass '{name}': {e}") from None


_SCALARS = (str, bool, int, float, type(None))


def _plain_value(value: Any, where: str) -> Any:
    """A scalar or a flat list of scalars (what an option can be), else a PipelineError.

    YAML can nest lists and maps without bound, or through aliases exponentially; neither is
    an option value, so they are refused before anything walks them.
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return value
    kind = "a nested list" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"
    raise PipelineError(f"{where}: expected a value or a list of values, got {kind}")


def parse_pipeline(text: str) -> Pipeline:
    """Parse `nm-sparsity{n=2 m=4},legalize-dense` into a Pipeline."""
    if not text.strip():
        return Pipeline()
    return Pipeline(make_pass(name, opts) for name, opts in split_items(text))


def pipeline_from_yaml(text: str) -> Pipeline:
    """Parse a YAML list of one-key maps: `- nm-sparsity: {n: 2, m: 4}`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PipelineError(f"pipeline file is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:  # the YAML parser recurses once per level of nesting
        raise PipelineError("pipeline file nests lists or maps too deeply") from None
    if doc is None:
        return Pipeline()
    if not isinstance(doc, list):
        raise PipelineError("pipeline file must be a YAML list of passes")
    passes = []
    for item in doc:
        if isinstance(item, str):
            passes.append(make_pass(item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, opts),) = item.items()
            if opts is not None and not isinstance(opts, dict):
                raise PipelineError(f"options of pass '{name}' must be a map")
            passes.append(make_pass(name, dict(opts or {})))
        else:
            raise PipelineError(f"pipeline file entry {item!r} is not a pass name or a one-key map")
    return Pipeline(passes)


def with_options(p: Pass, **changes: Any) -> Pass:
    return dataclasses.replace(p, **changes)
