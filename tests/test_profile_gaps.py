"""A profile without entries for a pattern (issue 26, item 5): its sites are measured live at their shapes, the
report saying so, instead of being left undecided; with live measurement off they stay undecided and the warnings
say how many and how to decide them."""

from __future__ import annotations

import pytest

from fxfusion.graph.loader import load_model
from fxfusion.planning.analyze import analyze
from fxfusion.planning.decide import LiveSource, ProfileSource
from fxfusion.profiles.profile import Profile
from tests.helpers import MODELS, TINY_SPEC

LACKED = "linear_bias_gelu"  # dynamic_control.py's second site; the tiny profile holds linear_bias_relu only


@pytest.fixture(scope="module")
def model():
    loaded = load_model(MODELS / "dynamic_control.py")
    return loaded.model, loaded.example_inputs


def run(model, source):
    return analyze(*model, source, time_forward=False, coverage=False)


def by_pattern(a):
    return {o.site.pattern: o for o in a.outcomes}


def test_a_pattern_the_profile_lacks_is_measured_live(tiny_profile, model):
    profile = Profile.load(tiny_profile)
    assert LACKED not in {e.pattern for e in profile.entries} and "linear_bias_relu" in {e.pattern for e in
                                                                                          profile.entries}
    a = run(model, ProfileSource(profile, "cpu"))  # the default: live for what the profile lacks
    lacked, held = by_pattern(a)[LACKED], by_pattern(a)["linear_bias_relu"]
    assert lacked.verdict != "undecided" and lacked.decision is not None and lacked.baseline_ms > 0
    assert lacked.warnings[0].startswith(f"measured live at this shape (eager, hand-fused and compile variants): the "
                                         f"profile has no entries for pattern '{LACKED}' on cpu")
    assert held.decision.measured_shape is not None  # the profile's own entry (nearest shape)
    assert not any("measured live" in w for w in held.warnings)
    assert lacked.site.id not in a.undecided()
    [summary] = [w for w in a.warnings if "the profile has no entries for" in w]
    assert summary.startswith(f"1 site shape(s) of 1 pattern(s) the profile has no entries for ({LACKED}) were "
                              "measured live") and f"calibrate --patterns {LACKED}" in summary
    assert summary in a.to_dict()["warnings"]


def test_a_callers_live_source_measures_the_gap(tiny_profile, model):
    live = LiveSource("cpu", TINY_SPEC, compile_modes=())  # --no-compile's: nothing but addmm for an nn.Linear site
    a = run(model, ProfileSource(Profile.load(tiny_profile), "cpu", live=live))
    lacked = by_pattern(a)[LACKED]
    assert lacked.warnings[0].startswith("measured live at this shape (eager and hand-fused variants)")
    assert lacked.baseline_ms > 0 and "drop --no-compile" in a.undecided()[lacked.site.id]


def test_without_live_measurement_the_gap_is_undecided_and_the_summary_says_how_to_decide(tiny_profile, model):
    a = run(model, ProfileSource(Profile.load(tiny_profile), "cpu", live=False))
    lacked = by_pattern(a)[LACKED]
    assert lacked.verdict == "undecided" and lacked.decision is None and lacked.baseline_ms is None
    assert "--measure" in lacked.warnings[0] and f"calibrate --patterns {LACKED}" in lacked.warnings[0]
    [summary] = [w for w in a.warnings if "the profile has no entries for" in w]
    assert "were not decided: decide them live (--measure)" in summary
