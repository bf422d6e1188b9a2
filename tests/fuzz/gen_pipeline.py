"""Fuzz cases for pipeline text and YAML pipeline files.

Cases start from the registered passes and their typed options (so most reach option
parsing and the passes' own validation) and then go wrong: unknown passes and options,
values of the wrong type, huge and non-finite numbers, quotes, nesting, unicode, and
character-level damage to the text. A pipeline that parses must round-trip: its full text
and its YAML parse back to an equal pipeline (the manifest replays compiles from the text).
A sample of parsed pipelines also runs on a tiny MLP with calibration data, so option
values that parse but break a pass are found too.
"""

from __future__ import annotations

import random
import types
import typing
from typing import Any

import numpy as np
import yaml

from sparsec.pm.pipeline import Pipeline, parse_pipeline, pipeline_from_yaml
from sparsec.pm.registry import all_passes

from .fuzz_property import Outcome, check_api

NASTY_STRINGS = (
    "", " ", "'", "''", "'a'", "a'b", "[", "]", "{", "}", "[a,b]", "{x=1}", ",", "=", "a b",
    "none", "None", "true", "*", "**/x", "é", "名前", "\u200b", "\x00", "a\nb", "\t", "🙂",
    "2:4", "1:8", "u:0.5", "b4x4:0.75", "dense", "5:4", "0:0", "u:", "b0x0:1", "a=0.5",
    "*=0.5", "x=2", "=", "sparsegpt", "wanda", "magnitude", "bn", "l1", "kl", "latency",
)
NASTY_NUMBERS = (
    "0", "-1", "1", "2", "4", "16", "99999999999999999999999", "-0", "1e999", "-1e999", "nan",
    "inf", "-inf", "NaN", "1e-320", "0.5", "1.0", "0x10", "1_0", "٣", "１", "+3", "3.", ".5",
    "1e3", "2**10", "", "true",
)
DAMAGE = "{}[]',= \n\t\"\\=:*é🙂\x00"


def _value_text(rng: random.Random, typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return "none" if rng.random() < 0.2 else _value_text(rng, args[0])
    if origin is tuple:
        (elem,) = {a for a in typing.get_args(typ) if a is not Ellipsis}
        items = [_value_text(rng, elem) for _ in range(rng.choice((0, 1, 2, 3)))]
        if rng.random() < 0.1:
            items.append("[" + ",".join(items) + "]")  # nesting
        return "[" + ",".join(items) + "]" if rng.random() < 0.9 else ",".join(items)
    if typ is bool:
        return rng.choice(("true", "false", "1", "0", "yes", "off", "maybe", "TRUE", ""))
    if typ in (int, float):
        if rng.random() < 0.5:
            return str(rng.choice((0, 1, 2, 4, 8, 16, -1, 3)) if typ is int else rng.choice((0.0, 0.25, 0.5, 0.9, 0.99, 1.0, -0.5)))
        return rng.choice(NASTY_NUMBERS)
    s = rng.choice(NASTY_STRINGS)
    return "'" + s + "'" if rng.random() < 0.3 else s


def _pass_text(rng: random.Random) -> str:
    passes = all_passes()
    name = rng.choice(sorted(passes)) if rng.random() < 0.92 else rng.choice(("nm_sparsity", "NM-sparsity", "unknown-pass", "", "é", "nm-sparsity!"))
    cls = passes.get(name)
    infos = cls.options() if cls else []
    opts = []
    for info in rng.sample(infos, min(len(infos), rng.choice((0, 1, 1, 2, 3)))):
        opts.append(f"{info.name}={_value_text(rng, info.type)}")
    if rng.random() < 0.08:
        opts.append(rng.choice(("bogus=1", "n", "=3", "N=2", "n=2 n=2")))
    if not opts and rng.random() < 0.5:
        return name
    return name + "{" + " ".join(opts) + "}"


def _damage(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op, at = rng.random(), rng.randrange(len(chars) + 1)
        if op < 0.4:
            chars.insert(at, rng.choice(DAMAGE))
        elif op < 0.7 and chars:
            del chars[min(at, len(chars) - 1)]
        elif chars:
            chars[min(at, len(chars) - 1)] = rng.choice(DAMAGE)
    return "".join(chars)


def pipeline_text(seed: int) -> str:
    rng = random.Random(seed)
    text = ",".join(_pass_text(rng) for _ in range(rng.choice((1, 1, 2, 3))))
    if rng.random() < 0.3:
        text = _damage(rng, text)
    if rng.random() < 0.05:
        text = rng.choice(("", " ", ",", "a,,b", "{" * 500, "[" * 3000 + "]" * 3000, "x{" + "[" * 3000 + "]" * 3000 + "}"))
    return text


def _yaml_value(rng: random.Random, typ: Any, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.55:
        text = _value_text(rng, typ)
        if typing.get_origin(typ) is tuple:
            return [t for t in text.strip("[]").split(",") if t] if rng.random() < 0.7 else text
        return text if rng.random() < 0.3 else yaml.safe_load(text) if _yaml_ok(text) else text
    if r < 0.75:
        return rng.choice((None, True, 2, -7, 10**30, 0.5, float("nan"), float("inf"), "a'b", b"\x00\x01", 2.5, [], {}))
    if depth < 3 and r < 0.9:
        return [_yaml_value(rng, typ, depth + 1) for _ in range(rng.choice((0, 1, 2)))]
    if depth < 3:
        return {"k": _yaml_value(rng, typ, depth + 1)}
    return "x"


def _yaml_ok(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return True


def pipeline_yaml(seed: int) -> str:
    rng = random.Random(seed)
    passes = all_passes()
    doc: list[Any] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        name = rng.choice(sorted(passes)) if rng.random() < 0.92 else rng.choice(("nope", 3, None, "", 2.5))
        cls = passes.get(name) if isinstance(name, str) else None
        infos = cls.options() if cls else []
        chosen = rng.sample(infos, min(len(infos), rng.choice((0, 1, 2, 3))))
        opts: Any = {i.name: _yaml_value(rng, i.type) for i in chosen}
        if rng.random() < 0.05:
            opts = rng.choice(([1, 2], "n=2", 7, {"bogus": 1}, {1: 2}))
        doc.append(name if not opts and rng.random() < 0.5 else {name: opts or None})
    text = yaml.safe_dump(doc, default_flow_style=rng.random() < 0.5, allow_unicode=rng.random() < 0.5)
    r = rng.random()
    if r < 0.15:
        text = _damage(rng, text)
    elif r < 0.2:
        text = rng.choice((
            "- nm-sparsity: {include: " + "[" * 3000 + "]" * 3000 + "}",
            "- nm-sparsity: &a {include: *a}",
            "a: b", "'x'", "- - - x", "!!python/object:os.system {}", "- !!binary aGk=",
            "".join(f"- nm-sparsity: {{include: &{c} [" + ",".join([f"*{p}"] * 10 if p else ["x"] * 10) + "]}\n"
                    for c, p in zip("abcdefgh", ["", *"abcdefg"], strict=True)),
        ))
    return text


def _round_trips(p: Pipeline) -> str | None:
    for text in (p.to_text(full=True), p.to_text()):
        if parse_pipeline(text) != p:
            return f"text {text[:200]!r} parses to a different pipeline"
    if pipeline_from_yaml(p.to_yaml(full=True)) != p:
        return f"YAML of {p.to_text()[:200]!r} parses to a different pipeline"
    return None


def _tiny_mlp_run(p: Pipeline) -> None:
    """Run `p` on a 2-layer MLP with 32 calibration samples (verification on)."""
    import tempfile
    from pathlib import Path

    from sparsec.calib.data import CalibrationData
    from sparsec.pm.context import PassContext
    from sparsec.pm.manager import PassManager

    from .gen_models import tiny_mlp

    model = tiny_mlp()
    data = CalibrationData({"x": np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PassContext(calibration=data, repro_dir=Path(tmp) / "repro")
        PassManager(p).run(model, ctx)


def check_text(text: str, *, run: bool = False) -> Outcome:
    parsed: list[Pipeline] = []
    outcome = check_api(lambda: parsed.append(parse_pipeline(text)))
    if outcome.kind != "success":
        return outcome
    rt = check_api(lambda: _raise_if(_round_trips(parsed[0])))
    if rt.kind != "success":
        return Outcome("fail", f"round trip of {text[:200]!r}: {rt.detail}")
    if run:
        return check_api(lambda: _tiny_mlp_run(parsed[0]))
    return outcome


def check_yaml(text: str, *, run: bool = False) -> Outcome:
    parsed: list[Pipeline] = []
    outcome = check_api(lambda: parsed.append(pipeline_from_yaml(text)))
    if outcome.kind != "success":
        return outcome
    rt = check_api(lambda: _raise_if(_round_trips(parsed[0])))
    if rt.kind != "success":
        return Outcome("fail", f"round trip of YAML {text[:200]!r}: {rt.detail}")
    if run:
        return check_api(lambda: _tiny_mlp_run(parsed[0]))
    return outcome


class RoundTripError(AssertionError):
    pass


def _raise_if(problem: str | None) -> None:
    if problem:
        raise RoundTripError(problem)


def text_case(seed: int) -> Outcome:
    return check_text(pipeline_text(seed), run=seed % 10 == 0)


def yaml_case(seed: int) -> Outcome:
    return check_yaml(pipeline_yaml(seed), run=seed % 10 == 0)


__all__ = ["check_text", "check_yaml", "pipeline_text", "pipeline_yaml", "text_case", "yaml_case"]
