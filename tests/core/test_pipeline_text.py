from __future__ import annotations

import pytest

from sparsec.errors import OptionError, PipelineError
from sparsec.passes.sparsify.nm_sparsity import NMSparsity
from sparsec.pm.pipeline import Pipeline, parse_pipeline, pipeline_from_yaml
from sparsec.pm.presets import preset_pipeline


@pytest.mark.parametrize(
    "text",
    [
        "nm-sparsity",
        "nm-sparsity{n=1 m=8}",
        "nm-sparsity{n=2 m=4 exclude=[*head*,'lm head']},legalize-dense",
        "nm-sparsity{op_types=[MatMul] min_params=0}",
    ],
)
def test_text_round_trips(text: str) -> None:
    pipeline = parse_pipeline(text)
    again = parse_pipeline(str(pipeline))
    assert again == pipeline
    assert parse_pipeline(pipeline.to_text(full=True)) == pipeline


def test_python_and_text_spellings_agree() -> None:
    python = Pipeline([NMSparsity(n=1, m=8, exclude=("head*",))])
    assert parse_pipeline("nm-sparsity{n=1 m=8 exclude=[head*]}") == python
    assert str(python) == "nm-sparsity{n=1 m=8 exclude=[head*]}"


def test_full_text_spells_out_defaults() -> None:
    full = parse_pipeline("nm-sparsity").to_text(full=True)
    assert full.startswith("nm-sparsity{n=2 m=4 criterion=magnitude") and "op_types=[MatMul,Gemm,Conv,MoE]" in full
    assert "min_params=1024" in full


def test_yaml_round_trips() -> None:
    pipeline = parse_pipeline("nm-sparsity{n=1 m=8},legalize-dense")
    assert pipeline_from_yaml(pipeline.to_yaml()) == pipeline
    assert pipeline_from_yaml(pipeline.to_yaml(full=True)) == pipeline
    assert pipeline_from_yaml("- nm-sparsity: {n: 4, m: 8}\n- legalize-dense\n") == parse_pipeline(
        "nm-sparsity{n=4 m=8},legalize-dense"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no-such-pass", "unknown pass 'no-such-pass'"),
        ("nm-sparsity{q=1}", "has no option 'q'"),
        ("nm-sparsity{n=two}", "expected an integer"),
        ("nm-sparsity{n=5 m=4}", "N must be smaller than M"),
        ("nm-sparsity{n=1 n=2}", "given twice"),
        ("nm-sparsity{n=1", "unbalanced"),
        ("nm-sparsity{n}", "not key=value"),
        ("nm-sparsity,,legalize-dense", "empty pass name"),
        ("nm-sparsity{criterion=psychic}", "unknown criterion"),
    ],
)
def test_bad_pipelines_name_the_problem(text: str, message: str) -> None:
    # N:M validation raises OptionError (shared with --sparsity); the rest PipelineError.
    with pytest.raises((PipelineError, OptionError), match=message):
        parse_pipeline(text)


def test_bad_yaml() -> None:
    with pytest.raises(PipelineError, match="YAML list"):
        pipeline_from_yaml("nm-sparsity: 1")
    with pytest.raises(PipelineError, match="not valid YAML"):
        pipeline_from_yaml("- [unclosed")


def test_presets_expand_the_cli_sugar() -> None:
    assert str(preset_pipeline(target="cpu", sparsity="1:8")) == "nm-sparsity{n=1 m=8 only_faster=true}"
    assert str(preset_pipeline(target="cpu", sparsity="1:8", prune_all=True)) == "nm-sparsity{n=1 m=8}"
    assert len(preset_pipeline(target="cpu", sparsity="none")) == 0
    for bad, msg in (("5:4", "smaller"), ("0:4", "at least 1"), ("2:3.5", "two integers"), ("x", "two integers")):
        with pytest.raises(OptionError, match=msg):
            preset_pipeline(sparsity=bad)
    with pytest.raises(OptionError, match="unknown target"):
        preset_pipeline(target="quantum")
