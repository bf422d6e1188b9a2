"""The text spelling of pipelines: `name{key=value key=value},name2`.

Values: integers, floats, `true`/`false`, bare or single-quoted strings (a quote inside a
quoted string is doubled: `'it''s'`), and lists written `[a,b,c]`. Parsing is driven by each
pass's option types, so errors name the pass and option.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

from sparsec.errors import PipelineError

_BARE = re.compile(r"[A-Za-z0-9_.:*?/+\-]+")
# ASCII spellings only: Python's int()/float() also take '1_000', other scripts' digits and
# 'nan', which would not print back the same.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_RANGE = 2**63


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside braces, brackets and quotes."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{ch}' in pipeline text: {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quote:
        raise PipelineError(f"unbalanced brackets or quotes in pipeline text: {text!r}")
    parts.append(text[start:])
    return parts


def split_items(text: str) -> list[tuple[str, dict[str, str]]]:
    """'a{x=1 y=2},b' -> [('a', {'x': '1', 'y': '2'}), ('b', {})] with values still text."""
    items = []
    for raw in split_top_level(text.strip(), ","):
        raw = raw.strip()
        if not raw:
            raise PipelineError(f"empty pass name in pipeline text: {text!r}")
        match = re.fullmatch(r"([A-Za-z0-9_\-]+)\s*(?:\{(.*)\})?", raw, flags=re.S)
        if not match:
            raise PipelineError(f"cannot parse pipeline element {raw!r} (expected name{{k=v ...}})")
        name, body = match.group(1), match.group(2) or ""
        options: dict[str, str] = {}
        for token in split_top_level(body.strip(), " ") if body.strip() else []:
            if not token:
                continue
            if "=" not in token:
                raise PipelineError(f"pass '{name}': option {token!r} is not key=value")
            key, value = token.split("=", 1)
            if key in options:
                raise PipelineError(f"pass '{name}': option '{key}' given twice")
            options[key] = value
        items.append((name, options))
    return items


def parse_value(text: str, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text in ("none", "None"):
            return None
        return parse_value(text, args[0], where)
    if origin is tuple:
        (elem,) = {a for a in typing.get_args(typ) if a is not Ellipsis}
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        parts = [p.strip() for p in split_top_level(body, ",")] if body.strip() else []
        return tuple(parse_value(p, elem, where) for p in parts)
    if typ is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise PipelineError(f"{where}: expected true or false, got {text!r}{_comma_hint(text)}")
    if typ is int:
        if not _INT.fullmatch(text.strip()):
            raise PipelineError(f"{where}: expected an integer, got {text!r}{_comma_hint(text)}")
        value = int(text)
        if not -_INT_RANGE <= value < _INT_RANGE:
            raise PipelineError(f"{where}: integer {text!r} is out of range")
        return value
    if typ is float:
        value = float(text) if _FLOAT.fullmatch(text.strip()) else math.nan
        if not math.isfinite(value):
            raise PipelineError(f"{where}: expected a finite number, got {text!r}{_comma_hint(text)}")
        return value
    if typ is str:
        if len(text) >= 2 and text[0] == text[-1] == "'":
            return text[1:-1].replace("''", "'")
        return text
    raise PipelineError(f"{where}: unsupported option type {typ}")


def _comma_hint(text: str) -> str:
    # `nm-sparsity{n=2, m=4}` reads as n='2,': say how options are really separated.
    if text.endswith(","):
        return " (options are separated by spaces, not commas: nm-sparsity{n=2 m=4})"
    return ""


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "none"
    text = str(value)
    # 'none' is quoted so that an optional string option keeps it as text, not None.
    if _BARE.fullmatch(text) and text not in ("none", "None"):
        return text
    return "'" + text.replace("'", "''") + "'"
