"""Profiles: one serialization path, schema validation, clear failures, nearest-entry decisions."""

from __future__ import annotations

import json

import pytest

from fxfusion.errors import FxFusionError
from fxfusion.profiles.profile import Profile
from fxfusion.profiles.schema import SCHEMA_VERSION, atomic_write_json, load_schema, schema_errors


def test_written_profile_validates_and_round_trips(tiny_profile):
    data = json.loads(tiny_profile.read_text())
    assert schema_errors(data, "profile") == []
    profile = Profile.load(tiny_profile)
    assert profile.to_dict() == data
    assert profile.metadata["threads"] >= 1 and profile.metadata["command"] == "pytest tiny_profile"


def test_every_size_is_kept(tiny_profile):
    profile = Profile.load(tiny_profile)
    keys = [e.key() for e in profile.entries]
    assert len(keys) == len(set(keys)) == 6  # 3 patterns x 2 quick sizes, none overwriting another
    for e in profile.entries:
        eager = e.variant("eager")
        assert eager.status == "ok" and len(eager.samples_ms) >= 5
        assert e.roofline["unfused_ms"] >= e.roofline["fused_ms"] > 0
        for v in e.variants:
            if v.status == "ok" and v.kind != "eager":
                assert v.speedup.ci_low <= v.speedup.median <= v.speedup.ci_high
                assert v.rel_error <= v.tolerance


def test_decide_exact_and_nearest_with_distance(tiny_profile):
    profile = Profile.load(tiny_profile)
    exact = profile.decide("linear_bias_relu", {"M": 64, "K": 256, "N": 256}, "float32")
    assert exact.exact and exact.warnings == []
    entry = profile.find("linear_bias_relu", {"M": 64, "K": 256, "N": 256}, "float32")[0]
    # planning's default regime is pipelined: the entry's pipelined decision
    assert exact.regime == "pipelined"
    assert exact.verdict == entry.pipelined_decision.verdict
    assert exact.best_variant == entry.pipelined_decision.best_variant
    near = profile.decide("linear_bias_relu", {"M": 80, "K": 256, "N": 256}, "float32")
    assert near.measured_shape == {"M": 64, "K": 256, "N": 256} and 0 < near.distance < 0.3
    assert near.warnings == []
    far = profile.decide("linear_bias_relu", {"M": 8192, "K": 8192, "N": 8192}, "float32")
    assert far.measured_shape == {"M": 512, "K": 1024, "N": 1024}
    assert any("extrapolation" in w for w in far.warnings)
    other_dtype = profile.decide("linear_bias_relu", {"M": 64, "K": 256, "N": 256}, "bfloat16")
    assert any("no bfloat16 entries" in w for w in other_dtype.warnings)
    assert profile.should_fuse("full_attention", {"B": 1, "H": 2, "S": 64, "D": 32}) == (
        profile.decide("full_attention", {"B": 1, "H": 2, "S": 64, "D": 32}).verdict == "fuse")


def test_decide_unknown_pattern_is_a_clear_error(tiny_profile):
    with pytest.raises(FxFusionError, match="no entries for pattern 'rmsnorm'; it has"):
        Profile.load(tiny_profile).decide("rmsnorm", {"M": 1, "N": 1})


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not valid JSON"),
    ('{"kind": "something.else"}', "is not an fxfusion profile"),
    ("[1, 2]", "is not an fxfusion profile"),
])
def test_load_rejects_corrupt_and_foreign_files(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(FxFusionError, match=message):
        Profile.load(path)


def test_load_names_the_json_path_of_a_schema_violation(tiny_profile, tmp_path):
    data = json.loads(tiny_profile.read_text())
    data["entries"][1]["decision"]["verdict"] = "maybe"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FxFusionError, match=r"\$\.entries\[1\]\.decision\.verdict"):
        Profile.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FxFusionError, match="does not exist"):
        Profile.load(tmp_path / "none.json")


def test_invalid_profile_is_never_written(tiny_profile, tmp_path):
    profile = Profile.load(tiny_profile)
    profile.entries[0].decision.verdict = "maybe"
    out = tmp_path / "out.json"
    with pytest.raises(FxFusionError):
        profile.save(out)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path):
    out = tmp_path / "x.json"
    out.write_text("old")
    with pytest.raises(ValueError):
        atomic_write_json(out, {"bad": float("nan")})
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_incorrect_variant_must_carry_a_reason_by_schema(tiny_profile):
    data = json.loads(tiny_profile.read_text())
    v = data["entries"][0]["variants"][1]
    v["status"], v["reason"] = "incorrect", None
    assert any("reason" in path for path, _ in schema_errors(data, "profile"))


def test_schema_is_draft_2020_12_with_a_version():
    schema = load_schema("profile")
    assert schema["$schema"].endswith("2020-12/schema")
    # 1.1 is written (two regimes); 1.0 profiles (one regime) still load
    assert schema["properties"]["schema_version"]["enum"] == ["1.0", "1.1"] and SCHEMA_VERSION == "1.1"


def test_decide_on_another_device_says_which_devices_the_profile_has(tiny_profile):
    with pytest.raises(FxFusionError, match="entries for pattern 'full_attention' on cpu only, not on cuda"):
        Profile.load(tiny_profile).decide("full_attention", {"B": 1, "H": 2, "S": 64, "D": 32}, device="cuda")


def test_written_files_get_ordinary_permissions(tmp_path):
    import os

    out = atomic_write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unknown_decision_keys_are_schema_errors(tiny_profile):
    data = json.loads(tiny_profile.read_text())
    data["entries"][0]["decision"]["surprise"] = 1
    assert any("decision" in path for path, _ in schema_errors(data, "profile"))


def test_should_fuse_warns_with_the_decision_s_warnings(tiny_profile):
    """A bare bool cannot carry "this is an extrapolation": should_fuse issues each warning of the decision."""
    import warnings

    from fxfusion.errors import FxFusionWarning

    profile = Profile.load(tiny_profile)
    far = {"M": 8192, "K": 8192, "N": 8192}
    with pytest.warns(FxFusionWarning, match="far from .* the decision is an extrapolation") as caught:
        answer = profile.should_fuse("linear_bias_relu", far)
    assert answer == (profile.decide("linear_bias_relu", far).verdict == "fuse")
    assert caught[0].filename == __file__  # points at the caller's line
    with pytest.warns(FxFusionWarning, match="no bfloat16 entries"):
        profile.should_fuse("linear_bias_relu", {"M": 64, "K": 256, "N": 256}, "bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact or near shape warns nothing
        profile.should_fuse("linear_bias_relu", {"M": 80, "K": 256, "N": 256})


def test_undecided_decision_shows_as_undecided_in_tables_and_analyses(tiny_profile):
    """No fused variant ran: stored as neutral with no speedup; the terminal table, the HTML and a site say
    "undecided" (the schema's verdicts stay fuse / neutral / avoid)."""
    import io

    from fxfusion.calibration.calibrate import _decide
    from fxfusion.planning.decide import Lookup, decide_site
    from fxfusion.reports.console import print_summary
    from fxfusion.reports.html import decision_table

    profile = Profile.load(tiny_profile)
    entry = next(e for e in profile.entries if e.pattern == "linear_bias_relu")
    for v in entry.variants[1:]:
        v.status, v.reason, v.speedup, v.verdict, v.samples_ms, v.median_ms = "unsupported", "test", None, None, [], None
    entry.decision = _decide(entry.pattern, entry.shape, entry.dtype, entry.device, entry.variants)
    assert entry.decision.verdict == "neutral" and entry.decision.undecided
    assert schema_errors(profile.to_dict(), "profile") == []
    out = io.StringIO()
    print_summary(profile, out)
    assert "undecided" in out.getvalue()
    assert f'data-key="{entry.key()}" data-verdict="undecided"' in decision_table(profile)

    class FakeSite:
        status, pattern, roles, shape, dtype, id = "fusible", entry.pattern, {}, dict(entry.shape), entry.dtype, "s"
        baseline_variant, flags = "eager", frozenset()  # what graph.sites.Site carries for its family

    outcome = decide_site(FakeSite(), Lookup(entry, entry.decision))
    assert outcome.verdict == "undecided" and outcome.saved_ms is None
    assert any(w.startswith("undecided: no fused variant runs here") for w in outcome.warnings)
