"""compare on real profiles: two measured ones (other patterns and dtypes), and edited copies with known flips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import TINY_SPEC
from fxfusion.cli.commands import app
from fxfusion.profiles.compare import Comparison, compare_profiles, decision_boundaries
from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Profile
from fxfusion.profiles.schema import SCHEMA_VERSION, schema_errors
from tests.helpers import edited

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tiny_profile) -> Profile:
    return Profile.load(tiny_profile)


@pytest.fixture(scope="module")
def second_profile(tmp_path_factory):
    """A second real calibration: two of tiny_profile's patterns plus one it lacks, in float32 and float64."""
    from fxfusion.calibration.calibrate import calibrate

    path = tmp_path_factory.mktemp("profiles") / "second.json"
    calibrate(hardware="generic-cpu", device="cpu", patterns="linear_bias_relu,full_attention,rmsnorm",
              dtypes="float32,float64", quick=True, output=path, compile_modes=(), spec=TINY_SPEC,
              command="pytest second_profile")
    return path


@pytest.fixture(scope="module")
def flipped(tiny, tmp_path_factory):
    """Two validated copies of the tiny profile: sdpa pinned 10x faster than eager in A and 10x slower in B at the
    small attention size (fuse in A, avoid in B), and 10x faster in B at the large size (fuse there)."""
    a = edited(tiny, {("full_attention", 0): ("sdpa", 10.0)})
    b = edited(tiny, {("full_attention", 0): ("sdpa", 0.1), ("full_attention", 1): ("sdpa", 10.0)})
    folder = tmp_path_factory.mktemp("flipped")
    a.save(folder / "a.json"), b.save(folder / "b.json")
    return a, b, folder / "a.json", folder / "b.json"


def keys(profile: Profile) -> set:
    return {(e.pattern, tuple(e.shape.items()), e.dtype) for e in profile.entries}


def attention(profile: Profile):
    return sorted((e for e in profile.entries if e.pattern == "full_attention"), key=lambda e: e.flops)


# -- two measured profiles ---------------------------------------------------------------------------------------------

def test_real_profiles_match_by_pattern_shape_and_dtype(tiny, second_profile):
    second = Profile.load(second_profile)
    c = compare_profiles(tiny, second)
    shared = keys(tiny) & keys(second)
    assert len(shared) == 4  # linear_bias_relu and full_attention, float32, two sizes each
    assert {(p.pattern, tuple(p.shape.items()), p.dtype) for p in c.pairs} == shared
    assert len(c.only_in_a) == len(keys(tiny) - shared) and all("conv2d_bn_relu" in k for k in c.only_in_a)
    assert len(c.only_in_b) == len(keys(second) - shared)
    assert any(":float64" in k for k in c.only_in_b) and any(k.startswith("rmsnorm[") for k in c.only_in_b)


@pytest.mark.parametrize("regime", ["pipelined", "isolated"])
def test_real_pairs_flags_agree_with_both_decisions(tiny, second_profile, regime):
    second = Profile.load(second_profile)
    c = compare_profiles(tiny, second, regime=regime)
    assert c.regime == regime and c.to_dict()["regime"] == regime and c.summary_line().startswith(regime)
    for p in c.pairs:
        ea = tiny.find(p.pattern, p.shape, p.dtype)[0]
        eb = second.find(p.pattern, p.shape, p.dtype)[0]
        da, db = ea.decision_for(regime), eb.decision_for(regime)
        assert p.verdict_flip == (da.verdict != db.verdict)
        assert p.best_flip == (da.best_variant != db.best_variant)
        if da.speedup and db.speedup:
            assert p.speedup_ratio == pytest.approx(db.speedup.median / da.speedup.median)
        assert p.eager_time_ratio == pytest.approx(ea.timing("eager", regime).median_ms
                                                   / eb.timing("eager", regime).median_ms)
    assert c.flips == [p for p in c.pairs if p.verdict_flip or p.best_flip]


def test_regimes_are_compared_apart(tiny):
    """The same profile against itself flips nothing in either regime, and a profile's two regimes really differ
    where its verdicts do (so the option is not a no-op)."""
    for regime in ("pipelined", "isolated"):
        assert not compare_profiles(tiny, tiny, regime=regime).flips
    differ = [e for e in tiny.entries if e.decision_for("pipelined").verdict != e.decision_for("isolated").verdict]
    pipelined = {(p.pattern, tuple(p.shape.items()), p.dtype): p.a.verdict
                 for p in compare_profiles(tiny, tiny, regime="pipelined").pairs}
    for e in differ:
        assert pipelined[(e.pattern, tuple(e.shape.items()), e.dtype)] == e.decision_for("pipelined").verdict


def test_real_boundaries_are_where_consecutive_verdicts_differ(second_profile):
    second = Profile.load(second_profile)
    found = {(b.pattern, b.dtype, b.below_flops, b.above_flops) for b in decision_boundaries(second, "b", "isolated")}
    expected = set()
    for pattern, dtype in {(e.pattern, e.dtype) for e in second.entries}:
        entries = sorted((e for e in second.entries if (e.pattern, e.dtype) == (pattern, dtype)), key=lambda e: e.flops)
        expected |= {(pattern, dtype, lo.flops, hi.flops) for lo, hi in zip(entries, entries[1:])
                     if lo.decision.verdict != hi.decision.verdict}
    assert found == expected


def test_identical_profiles_have_no_flips(tiny):
    c = compare_profiles(tiny, tiny)
    assert len(c.pairs) == len(tiny.entries) and c.flips == [] and not c.only_in_a and not c.only_in_b
    assert all(p.speedup_ratio in (None, 1.0) for p in c.pairs)


# -- edited copies: flips we know are there ----------------------------------------------------------------------------

def test_verdict_and_best_variant_flip_are_flagged(flipped):
    a, b, *_ = flipped
    c = compare_profiles(a, b, regime="isolated")
    small = attention(a)[0]
    flip = next(p for p in c.flips if p.pattern == "full_attention" and p.shape == small.shape)
    assert (flip.a.verdict, flip.b.verdict) == ("fuse", "avoid")
    assert (flip.a.best_variant, flip.b.best_variant) == ("sdpa", "eager")
    assert flip.verdict_flip and flip.best_flip
    # A's sdpa runs in min(eager)/10, B's in max(eager)*10: B's speedup over A's is their inverse ratio
    eager = attention(a)[0].variant("eager").samples_ms
    expected = (min(eager) / 10) / (max(eager) * 10)
    assert flip.speedup_ratio == pytest.approx(expected, rel=1e-9)
    assert flip.variant_ratios["sdpa"] == pytest.approx(expected, rel=1e-9)
    assert flip.eager_time_ratio == pytest.approx(1.0)


def test_boundary_lies_between_the_two_attention_sizes_in_b(flipped):
    a, b, *_ = flipped
    small, large = attention(b)
    mine = [x for x in compare_profiles(a, b, regime="isolated").boundaries if x.profile == "b" and x.pattern == "full_attention"]
    assert len(mine) == 1
    x = mine[0]
    assert (x.below_shape, x.below_verdict, x.above_shape, x.above_verdict) == \
           (small.shape, "avoid", large.shape, "fuse")
    assert (x.below_flops, x.above_flops) == (small.flops, large.flops)


def test_markdown_lists_the_flip_and_the_boundary(flipped):
    a, b, *_ = flipped
    md = compare_profiles(a, b, regime="isolated").to_markdown()
    flips = md.split("## Flips", 1)[1].split("##", 1)[0]
    small = ",".join(f"{k}={v}" for k, v in attention(a)[0].shape.items())
    assert f"| full_attention | {small} | float32 |" in flips
    assert "verdict fuse -> avoid; best sdpa -> eager" in flips
    boundaries = md.split("## Decision boundaries", 1)[1].split("##", 1)[0]
    assert f"| full_attention | float32 | B | avoid at {small}" in boundaries


# -- CLI -----------------------------------------------------------------------------------------------------------------

def test_cli_json_is_the_comparison(flipped):
    a, b, pa, pb = flipped
    result = runner.invoke(app, ["compare", str(pa), str(pb), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kind"] == "fxfusion.comparison"
    assert data["summary"]["matched"] == len(a.entries) and data["summary"]["verdict_flips"] >= 1
    assert data == json.loads(json.dumps(compare_profiles(a, b).to_dict()))


def test_cli_table_and_markdown(flipped, tmp_path):
    *_, pa, pb = flipped
    table = runner.invoke(app, ["compare", str(pa), str(pb)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "Flips" in table.output and "fuse -> avoid" in table.output
    out = tmp_path / "cmp.md"
    md = runner.invoke(app, ["compare", str(pa), str(pb), "--format", "markdown", "-o", str(out)])
    assert md.exit_code == 0 and f"wrote {out}" in md.output
    assert out.read_text().startswith("# fxfusion compare")
    out_txt = tmp_path / "cmp.txt"
    assert runner.invoke(app, ["compare", str(pa), str(pb), "-o", str(out_txt)]).exit_code == 0
    assert "fuse -> avoid" in out_txt.read_text()


@pytest.mark.parametrize("case", ["missing", "not_json", "schema_invalid", "unknown_format"])
def test_cli_bad_input_is_one_line_and_writes_nothing(case, flipped, tmp_path):
    *_, pa, pb = flipped
    bad = tmp_path / "bad.json"
    args = [str(pa), str(bad)]
    if case == "missing":
        message = "does not exist"
    elif case == "not_json":
        bad.write_text("{\"kind\": ")
        message = "not valid JSON"
    elif case == "schema_invalid":
        data = json.loads(pb.read_text())
        del data["entries"][1]["variants"][0]["samples_ms"]
        bad.write_text(json.dumps(data))
        message = "$.entries[1].variants[0]"
    else:
        args, message = [str(pa), str(pb), "--format", "html"], "unknown --format"
    out = tmp_path / "out.md"
    result = runner.invoke(app, ["compare", *args, "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert message in result.output and not out.exists()


# -- the JSON file and its schema (schemas/comparison.schema.json) -----------------------------------------------------

def test_real_comparison_matches_its_schema(tiny, second_profile):
    data = json.loads(compare_profiles(tiny, Profile.load(second_profile)).to_json())
    assert schema_errors(data, "comparison") == []
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == "fxfusion.comparison"
    assert data["pairs"] and data["only_in_a"] and data["only_in_b"]  # every list of the format is exercised


def test_comparison_with_flips_and_boundaries_matches_its_schema(flipped):
    a, b, *_ = flipped
    data = json.loads(compare_profiles(a, b, regime="isolated").to_json())
    assert schema_errors(data, "comparison") == []
    assert data["summary"]["verdict_flips"] >= 1 and any(x["profile"] == "b" for x in data["boundaries"])
    assert any(p["variant_ratios"] for p in data["pairs"]) and any(p["a"]["speedup"] for p in data["pairs"])


def test_cli_json_file_is_written_validated_and_passes_validate(tiny_profile, second_profile, tmp_path):
    out = tmp_path / "cmp.json"
    result = runner.invoke(app, ["compare", str(tiny_profile), str(second_profile), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    check = runner.invoke(app, ["validate", str(out)])
    assert check.exit_code == 0, check.output
    s = json.loads(out.read_text())["summary"]
    assert check.output == (f"{out}: valid comparison ({s['matched']} entries in both, {s['verdict_flips']} verdict "
                            f"flips, {s['best_variant_flips']} best-variant flips)\n")


def test_a_comparison_that_breaks_its_schema_is_never_written(flipped, tmp_path, monkeypatch):
    """to_json validates before anything is printed or written: a verdict outside fuse/neutral/avoid stops it."""
    *_, pa, pb = flipped
    original = Comparison.to_dict

    def broken(self):
        data = original(self)
        data["pairs"][0]["a"]["verdict"] = "maybe"
        return data

    monkeypatch.setattr(Comparison, "to_dict", broken)
    out = tmp_path / "cmp.json"
    result = runner.invoke(app, ["compare", str(pa), str(pb), "--format", "json", "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "comparison schema at $.pairs[0].a.verdict" in result.output
    printed = runner.invoke(app, ["compare", str(pa), str(pb), "--format", "json"])
    assert printed.exit_code == 1 and "$.pairs[0].a.verdict" in printed.output and "{" not in printed.output
    with pytest.raises(FxFusionError, match="maybe"):
        compare_profiles(*flipped[:2], regime="isolated").to_json()


def test_report_refuses_a_comparison_in_one_line(flipped, tmp_path):
    *_, pa, pb = flipped
    path = tmp_path / "cmp.json"
    assert runner.invoke(app, ["compare", str(pa), str(pb), "--format", "json", "-o", str(path)]).exit_code == 0
    out = tmp_path / "cmp.html"
    result = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 1 and "is a comparison" in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1


# -- the terminal table at the widths people have (issue 27) ----------------------------------------------------------

SHIPPED = [str(ROOT / "profiles" / "generic-cpu-epyc-2core.json"), str(ROOT / "profiles" / "h200.json")]


@pytest.mark.parametrize("width", [100, 60])
def test_cli_table_fits_the_width_with_whole_pattern_names(width):
    """The shipped CPU and H200 profiles: every line within the width, every pattern name whole (never folded to 8
    characters), and the ~300 entries found in one profile only counted in one line each, not listed."""
    result = runner.invoke(app, ["compare", *SHIPPED], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    comparison = compare_profiles(*(Profile.load(p) for p in SHIPPED))
    rows = [line.split("│")[1].strip() for line in lines if line.startswith("│ ") and line.split("│")[1].strip()]
    assert set(rows) >= {p.pattern for p in comparison.flips}  # whole names
    assert sum(bool(re.match(r"only in [AB]: \d+ entries: ", line)) for line in lines) == 2
    assert " more (--format markdown or json lists them all)" in " ".join(result.stdout.split())


def test_cli_infers_the_format_from_the_output_suffix(flipped, tmp_path):
    *_, pa, pb = flipped
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["compare", str(pa), str(pb), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["kind"] == "fxfusion.comparison"
    assert result.stdout == "" and f"wrote {out}" in result.stderr  # the message on stderr
