"""validate: good files pass, broken ones print every error with its JSON path and exit 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fxfusion.cli.commands import app
from fxfusion.profiles.compare import compare_profiles
from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Profile
from fxfusion.profiles.validation import validate_document, validate_file
from tests.helpers import edited, make_analysis

runner = CliRunner()


def write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def profile_data(tiny_profile) -> dict:
    return json.loads(tiny_profile.read_text())


@pytest.fixture
def analysis_data(tiny_profile) -> dict:
    return make_analysis(Profile.load(tiny_profile))


@pytest.fixture
def comparison_data(tiny_profile) -> dict:
    """The real profile against an edited copy in which sdpa loses 10x at the small attention size: one verdict flip
    and one decision boundary."""
    a = Profile.load(tiny_profile)
    return json.loads(compare_profiles(a, edited(a, {("full_attention", 0): ("sdpa", 0.1)}), regime="isolated").to_json())


def test_real_profile_is_valid(tiny_profile):
    result = runner.invoke(app, ["validate", str(tiny_profile)])
    assert result.exit_code == 0, result.output
    n = len(json.loads(tiny_profile.read_text())["entries"])
    assert result.output == f"{tiny_profile}: valid profile ({n} entries, hardware generic-cpu)\n"


def test_analysis_is_valid(analysis_data, tmp_path):
    path = write(tmp_path / "analysis.json", analysis_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid analysis (2 sites" in result.output


def test_comparison_is_valid(comparison_data, tmp_path):
    path = write(tmp_path / "cmp.json", comparison_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    n = comparison_data["summary"]["matched"]
    assert result.output.startswith(f"{path}: valid comparison ({n} entries in both, ")
    assert comparison_data["summary"]["verdict_flips"] >= 1 and comparison_data["boundaries"]


def test_broken_comparison_prints_every_error_with_its_path(comparison_data, tmp_path):
    comparison_data["pairs"][0]["b"]["verdict"] = "maybe"
    del comparison_data["pairs"][1]["eager_time_ratio"]
    comparison_data["boundaries"][0]["profile"] = "c"
    comparison_data["a"]["threads"] = 0
    comparison_data["summary"]["flips"] = 3  # the summary is closed
    path = write(tmp_path / "cmp.json", comparison_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: invalid comparison, 5 error(s):"
    assert lines[1:] == [
        "  $.a.threads: 0 is less than the minimum of 1",
        "  $.boundaries[0].profile: 'c' is not one of ['a', 'b']",
        "  $.pairs[0].b.verdict: 'maybe' is not one of ['fuse', 'neutral', 'avoid']",
        "  $.pairs[1]: 'eager_time_ratio' is a required property",
        "  $.summary: Additional properties are not allowed ('flips' was unexpected)",
    ]


@pytest.mark.parametrize("where,missing", [("$", "schema_version"), ("$", "pairs"), ("$", "notes"), ("$.b", "date"),
                                           ("$.pairs[0].a", "best_ms"), ("$.boundaries[0]", "above_verdict")])
def test_comparison_without_a_required_field_is_invalid_at_its_path(where, missing, comparison_data):
    parent = comparison_data
    for step in where.lstrip("$").replace("[", ".").replace("]", "").split(".")[1:]:
        parent = parent[int(step)] if step.isdigit() else parent[step]
    del parent[missing]
    assert validate_document(comparison_data, "cmp.json").errors == [(where, f"'{missing}' is a required property")]


def test_comparison_that_contradicts_itself_is_invalid_at_the_paths(comparison_data, tmp_path):
    """Schema-valid but wrong about itself: a flip flag against the two verdicts, a count against its list."""
    flip = next(i for i, p in enumerate(comparison_data["pairs"]) if p["verdict_flip"])
    comparison_data["pairs"][flip]["verdict_flip"] = False
    comparison_data["summary"]["only_in_b"] = 7
    path = write(tmp_path / "cmp.json", comparison_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    paths = [line.split(": ", 1)[0].strip() for line in result.output.splitlines()[1:]]
    assert paths == [f"$.pairs[{flip}].verdict_flip", "$.summary.verdict_flips", "$.summary.only_in_b"]


def test_broken_profile_prints_every_error_with_its_path(profile_data, tmp_path):
    profile_data["entries"][0]["variants"][0]["samples_ms"] = []  # an "ok" variant needs samples
    profile_data["entries"][1]["decision"]["verdict"] = "maybe"
    del profile_data["metadata"]["date"]
    profile_data["ceilings"]["bandwidth"][0]["gbs"] = "fast"
    path = write(tmp_path / "broken.json", profile_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: invalid profile, 4 error(s):"
    assert lines[1:] == [
        "  $.ceilings.bandwidth[0].gbs: 'fast' is not of type 'number'",
        "  $.entries[0].variants[0].samples_ms: [] should be non-empty",
        "  $.entries[1].decision.verdict: 'maybe' is not one of ['fuse', 'neutral', 'avoid']",
        "  $.metadata: 'date' is a required property",
    ]


def test_broken_analysis_prints_every_error_with_its_path(analysis_data, tmp_path):
    analysis_data["sites"][1]["reasons"] = []  # an illegal site must say why
    analysis_data["sites"][0]["id"] = "site-0"
    analysis_data["summary"]["sites"] = -1
    path = write(tmp_path / "analysis.json", analysis_data)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    paths = [line.split(": ", 1)[0].strip() for line in result.output.splitlines()[1:]]
    assert paths == ["$.sites[0].id", "$.sites[1].reasons", "$.summary.sites"]


def test_long_messages_are_cut_to_one_readable_line(profile_data):
    profile_data["entries"][0]["decision"]["measured_shape"] = {"M": 0}  # oneOf: quotes the whole value
    profile_data["entries"][0]["variants"][0]["verdict"] = "x" * 1000
    result = validate_document(profile_data, "p.json")
    assert {p for p, _ in result.errors} == {"$.entries[0].decision.measured_shape",
                                             "$.entries[0].variants[0].verdict"}
    assert all(len(m) <= 303 and "\n" not in m for _, m in result.errors)


def test_unknown_decision_key_is_a_schema_error_with_its_path(profile_data, tmp_path):
    """The decision object is closed: a key the loader would not understand is an error at its JSON path."""
    profile_data["entries"][0]["decision"]["confidence"] = 0.95
    result = validate_document(profile_data, "p.json")
    assert not result.valid and result.errors[0][0] == "$.entries[0].decision"
    assert "confidence" in result.errors[0][1]
    path = write(tmp_path / "odd.json", profile_data)
    out = tmp_path / "odd.html"
    report = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert report.exit_code == 1 and "decision" in report.output and not out.exists()
    assert len(report.output.strip().splitlines()) == 1


@pytest.mark.parametrize("case,content,message", [
    ("missing", None, "does not exist"),
    ("not_json", '{"kind": "fxfusion.profile",', "is not valid JSON"),
    ("no_kind", '{"entries": []}', 'no "kind" field'),
    ("other_kind", '{"kind": "fxfusion.plan"}', "kind 'fxfusion.plan'"),
    ("array", "[1, 2]", 'no "kind" field'),
])
def test_files_that_cannot_be_checked_are_one_line_errors(case, content, message, tmp_path):
    path = tmp_path / f"{case}.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert message in result.output and "Traceback" not in result.output
    with pytest.raises(FxFusionError, match=message.replace("(", r"\(")):
        validate_file(path)


def test_validate_never_writes(tiny_profile):
    before = tiny_profile.read_bytes()
    folder = sorted(p.name for p in tiny_profile.parent.iterdir())
    runner.invoke(app, ["validate", str(tiny_profile)])
    assert tiny_profile.read_bytes() == before and sorted(p.name for p in tiny_profile.parent.iterdir()) == folder
